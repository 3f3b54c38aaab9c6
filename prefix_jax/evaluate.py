r"""Decode a split with a run's trained model (or the untuned base), score it, write results.

    python -m prefix_jax.evaluate --workdir runs/e2e_prefix --split validation
    python -m prefix_jax.evaluate --workdir runs/e2e_prefix --adapter none   # untuned baseline

Reads the run's `config.json` for the model, method, data and decoding settings. Prefix,
prompt and LoRA runs decode with the run's `export/` (or `--adapter DIR`, e.g. a PEFT
prefix); full fine-tuning with the latest checkpoint. Writes `predictions.txt` (one output
per distinct source, in order), `predictions.jsonl` (with sources and references) and
`results.json` (metrics, decoding settings, timing) into `<workdir>/eval_<split>[_<tag>]/`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from prefix_jax import experiment, metrics
from prefix_jax.data import eval_batches, group_references
from prefix_jax.decode import beam_search
from prefix_jax.trained import load_trained

SPLITS = ("validation", "train")


def newline_token_ids(tokenizer) -> tuple[int, ...]:
    """Every token whose text contains a newline (outputs are one line, as in Li & Liang)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(i for i, text in enumerate(texts) if "\n" in text)


def score(task: str, hypotheses: list[str], references: list[list[str]], meteor_jar=None):
    if task == "e2e":
        return metrics.score_e2e(hypotheses, references, meteor_jar=meteor_jar)
    if task == "xsum":
        return metrics.score_summaries(hypotheses, references)
    return metrics.score_triples(hypotheses, references)


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    split: str = "validation",
    adapter: str | None = "",
    tag: str = "",
) -> dict:
    """Decode and score `split` with the run's trained model; `adapter=None` decodes with
    the base model alone, a path with that export instead of the run's."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    workdir = Path(workdir)
    model, tokenizer = experiment.load_model(config)
    trained = load_trained(config, workdir, model, tokenizer, adapter)
    train, validation = experiment.load_splits(config)
    groups = group_references(validation if split == "validation" else train)
    if config.data.max_eval_groups:
        groups = groups[: config.data.max_eval_groups]

    d = config.decode
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    banned = newline_token_ids(tokenizer) if d.ban_newline else ()
    hypotheses, references, sources = [], [], []
    generated, start = 0, time.perf_counter()
    bar = tqdm(total=len(groups), desc=f"decode {split}", unit="src", dynamic_ncols=True)
    batches = eval_batches(groups, tokenizer, d.batch_size, config=experiment.encode_config(config))
    for batch in batches:
        sequences, _ = beam_search(
            trained.model,
            batch["tokens"],
            batch["attention_mask"],
            beam_size=d.beam_size,
            max_new_tokens=d.max_new_tokens,
            prefix=trained.prefix,
            eos_id=tokenizer.eos_token_id,
            pad_id=pad_id,
            length_penalty=d.length_penalty,
            min_new_tokens=d.min_new_tokens,
            banned_ids=banned,
        )
        sequences = np.asarray(jax.device_get(sequences))
        for row in np.flatnonzero(batch["valid"]):
            ids = _until_eos(sequences[row], tokenizer.eos_token_id)
            generated += len(ids) + 1
            text = tokenizer.decode(ids, skip_special_tokens=True)
            hypotheses.append(" ".join(text.split()))
            references.append(batch["references"][row])
            sources.append(batch["sources"][row])
        elapsed = time.perf_counter() - start
        bar.update(int(batch["valid"].sum()))
        bar.set_postfix(tok_s=f"{generated / max(elapsed, 1e-9):.0f}")
    bar.close()
    decode_s = time.perf_counter() - start

    scores = score(config.data.task, hypotheses, references, config.get("meteor_jar"))
    out = workdir / f"eval_{split}{'_' + tag if tag else ''}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.txt").write_text("".join(h + "\n" for h in hypotheses))
    with open(out / "predictions.jsonl", "w") as f:
        for src, hyp, refs in zip(sources, hypotheses, references, strict=True):
            f.write(json.dumps({"source": src, "prediction": hyp, "references": refs}) + "\n")
    results = {
        "split": split,
        "method": config.get("method", "prefix") if adapter is not None else "none",
        "weights": trained.source,
        "task": config.data.task,
        "num_sources": len(hypotheses),
        "metrics": scores,
        "decode": config.decode.to_dict(),
        "decode_s": decode_s,
        "generated_tokens_per_s": generated / max(decode_s, 1e-9),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _until_eos(ids: np.ndarray, eos_id: int | None) -> list[int]:
    ids = ids.tolist()
    if eos_id is not None and eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return ids


def format_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per run name, one column per metric."""
    names = list(dict.fromkeys(k for r in rows.values() for k in r))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, r in rows.items():
        cells = [_fmt(r.get(n)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "absent"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="validation", choices=SPLITS)
    parser.add_argument(
        "--adapter",
        "--prefix",
        default="",
        help="export directory to decode with instead of the run's (a prefix may be PEFT's), "
        "or 'none' for the untuned base model",
    )
    parser.add_argument("--tag", default="", help="suffix of the output directory")
    parser.add_argument("--beam-size", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--max-groups", type=int, help="score only the first N sources")
    args = parser.parse_args(argv)

    config_file = Path(args.workdir) / "config.json"
    if not config_file.exists():
        raise SystemExit(f"{config_file} not found: --workdir must be a training run directory")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    if args.beam_size:
        config.decode.beam_size = args.beam_size
    if args.max_new_tokens:
        config.decode.max_new_tokens = args.max_new_tokens
    if args.max_groups is not None:
        config.data.max_eval_groups = args.max_groups
    adapter = None if args.adapter == "none" else args.adapter
    tag = args.tag or ("noprefix" if adapter is None else "")
    results = evaluate(config, args.workdir, split=args.split, adapter=adapter, tag=tag)
    print(format_table({results["method"]: results["metrics"]}))


if __name__ == "__main__":
    main()
