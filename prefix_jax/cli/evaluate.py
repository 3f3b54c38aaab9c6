r"""Decode a split or a data file with a finished run (or the untuned base model), score it.

    prefix-jax evaluate --workdir runs/e2e_prefix [--split validation]
    prefix-jax evaluate --workdir runs/e2e_prefix --adapter none  # the untuned base model
    prefix-jax evaluate --workdir runs/e2e_prefix --data testset.csv [--task e2e]

The run's `config.json` gives the model, method, data and decoding settings; change any
of them for this evaluation with `--config.KEY=VALUE` (e.g. `--config.decode.beam_size=1`).
Outputs go to `<workdir>/eval_<split or file stem>[_<tag>]/` (see
`prefix_jax.infer.evaluate`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prefix_jax.config.parse import ConfigError, apply_overrides, split_overrides
from prefix_jax.config.upgrade import load_run_config
from prefix_jax.data.tasks import TASKS, DataError
from prefix_jax.infer.evaluate import SPLITS, evaluate, format_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a training run directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--split", choices=SPLITS, help="split of the run's data (default: validation)"
    )
    source.add_argument(
        "--data",
        help="score this data file instead (e.g. a task's official test set); outputs go to "
        "eval_<file stem>[_<tag>]",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        help="how to read --data (default: the run's task); also picks the metrics",
    )
    parser.add_argument(
        "--adapter",
        "--prefix",
        default="",
        help="export directory to decode with instead of the run's (a prefix may be PEFT's), "
        "or 'none' for the untuned base model",
    )
    parser.add_argument("--tag", default="", help="suffix of the output directory")
    parser.add_argument("--beam-size", type=int, help="same as --config.decode.beam_size")
    parser.add_argument("--max-new-tokens", type=int, help="same as --config.decode.max_new_tokens")
    parser.add_argument("--max-groups", type=int, help="score only the first N sources")
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    if args.task and not args.data:
        parser.error("--task needs --data")
    try:
        config = apply_overrides(load_run_config(args.workdir), overrides)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if args.beam_size:
        config.decode.beam_size = args.beam_size
    if args.max_new_tokens:
        config.decode.max_new_tokens = args.max_new_tokens

    adapter = None if args.adapter == "none" else args.adapter
    tag = args.tag or ("noprefix" if adapter is None else "")
    try:
        results = evaluate(
            config,
            args.workdir,
            split=args.split or "validation",
            data=args.data,
            task=args.task,
            adapter=adapter,
            tag=tag,
            max_groups=args.max_groups,
        )
    except DataError as err:
        raise SystemExit(f"evaluate: {err}") from None
    print(format_table({results["method"]: results["metrics"]}))
    for note in results["notes"]:
        print(note, file=sys.stderr)
    return 0
