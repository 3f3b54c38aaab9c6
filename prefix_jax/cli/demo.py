"""The README's main job: prefix-tune SmolLM2 on E2E, decode held-out MRs, print metrics.

    prefix-jax demo --data PATH/TO/e2e/devset.csv [--workdir runs/demo]

Uses `configs/e2e.py:local` (a few minutes on a CPU): the E2E file is split by MR (100 MRs
held out), a prefix is trained, and the untuned model (same prompt format) and the tuned
prefix are decoded on held-out MRs and scored. Rerunning resumes/reuses the run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from prefix_jax.config.parse import load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "e2e.py"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="E2E csv (mr,ref), e.g. the devset")
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--steps", type=int, help="training steps (default: the local config)")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        parser.error(f"E2E data file {args.data} not found; pass --data PATH/TO/devset.csv")

    from prefix_jax.infer.evaluate import evaluate, format_table
    from prefix_jax.train.loop import train

    config = load_config(f"{CONFIG}:local")
    config.data.path = args.data
    config.data.eval_sources = 100
    if args.steps:
        config.max_steps = args.steps
    summary = train(config, args.workdir)
    print(json.dumps(summary, indent=2))
    untuned = evaluate(config, args.workdir, adapter=None, tag="noprefix")
    tuned = evaluate(config, args.workdir)
    print(f"\nE2E, {tuned['num_sources']} held-out MRs, SmolLM2-135M-Instruct")
    print(format_table({"untuned": untuned["metrics"], "prefix-tuned": tuned["metrics"]}))
    for note in tuned["notes"]:
        print(note)
    samples = Path(args.workdir, "eval_validation", "predictions.jsonl").read_text().splitlines()
    for line in samples[:5]:
        record = json.loads(line)
        print(f"\n{record['source']}\n  -> {record['prediction']}")
    return 0
