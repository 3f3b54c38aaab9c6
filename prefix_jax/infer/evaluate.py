r"""Decode a split or a data file with a run's trained model (or the untuned base), score it.

The command line is `prefix-jax evaluate` (`prefix_jax.cli.evaluate`); it reads the run's
`config.json` (upgraded by `prefix_jax.config.upgrade`) for the model, method, data and
decoding settings. Prefix, prompt and LoRA runs decode with the run's `export/` (or another
export, e.g. a PEFT prefix); full fine-tuning with the latest checkpoint. Writes
`predictions.txt` (one output per distinct source, in order), `predictions.jsonl` (with
sources and references) and `results.json` (metrics, data, decoding settings, timing) into
`<workdir>/eval_<split>[_<tag>]/`, or for a data file (read as the run's task unless
another is named) into `<workdir>/eval_<file stem>[_<tag>]/`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from prefix_jax import metrics
from prefix_jax.data import eval_batches, group_references
from prefix_jax.data.pairs import pair_eval_batches
from prefix_jax.data.tasks import TASKS, DataError, EvalGroup, load_task
from prefix_jax.data.tokens import pad_id_of, until_eos
from prefix_jax.infer.decode import beam_search, newline_token_ids
from prefix_jax.infer.seq2seq_decode import beam_search_seq2seq
from prefix_jax.infer.trained import Trained, load_trained
from prefix_jax.train import assemble as experiment

SPLITS = ("validation", "train")


def score(task: str, hypotheses: list[str], references: list[list[str]], meteor_jar=None):
    if task == "e2e":
        return metrics.score_e2e(hypotheses, references, meteor_jar=meteor_jar)
    if task == "xsum":
        return metrics.score_summaries(hypotheses, references)
    return metrics.score_triples(hypotheses, references)


def data_file_groups(path: str | Path, task: str, *, skip_bad: bool = False) -> list[EvalGroup]:
    """One evaluation group per distinct source of the data file `path` read as `task`.

    Every reference of a source counts (WebNLG keeps all lexicalisations, as its official
    evaluation does, not only the `good` ones training uses). Raises `DataError` naming the
    problem: an unknown task, a missing file, or a file the task's reader cannot parse.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{path}: no such data file")
    options = {"good_only": False} if task == "webnlg" else {}
    try:
        result = load_task(task, file, skip_bad=skip_bad, **options)
    except DataError as err:
        raise DataError(f"{err} (read as {task!r} data)") from None
    return group_references(result.examples)


def output_dir(
    workdir: str | Path, *, split: str = "validation", data: str | Path | None = None, tag=""
) -> Path:
    """`eval_<split>[_<tag>]`, or for a data file `eval_<file stem>[_<tag>]`; a stem that
    could be read as a split's name gets `file_` before it (`eval_file_validation`), so a
    data file never overwrites the run's own evaluation."""
    name = split
    if data is not None:
        name = Path(data).stem
        if any(name == s or name.startswith(s + "_") for s in SPLITS):
            name = "file_" + name
    return Path(workdir) / f"eval_{name}{'_' + tag if tag else ''}"


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    split: str = "validation",
    data: str | Path | None = None,
    task: str | None = None,
    adapter: str | None = "",
    tag: str = "",
    max_groups: int | None = None,
) -> dict:
    """Decode and score `split` with the run's trained model; `adapter=None` decodes with
    the base model alone, a path with that export instead of the run's.

    With `data`, the data file is scored instead of a split, read as `task` (default: the
    run's); its outputs go to `output_dir(workdir, data=data, tag=tag)`. Only the first
    `max_groups` sources are decoded: by default `config.data.max_eval_groups` for a split
    and the whole file for `data`. E2E's METEOR uses `config.meteor_jar`, else the jar of an
    installed `pycocoevalcap`; when it is absent, `results["notes"]` says how to get it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if task is not None and data is None:
        raise ValueError("task chooses the reader of a data file: give data too")
    workdir = Path(workdir)
    if data is None:  # the data first: a bad file fails before the model is loaded
        task, data_name = config.data.task, config.data.path
        train, validation = experiment.load_splits(config)
        groups = group_references(validation if split == "validation" else train)
        limit = config.data.max_eval_groups if max_groups is None else max_groups
    else:
        task, data_name = task or config.data.task, str(Path(data).expanduser().resolve())
        groups = data_file_groups(data, task, skip_bad=config.data.skip_bad)
        limit = max_groups or 0
    if limit:
        groups = groups[:limit]
    meteor_jar, notes = _meteor_jar(config) if task == "e2e" else (None, [])
    model, tokenizer = experiment.load_model(config)
    trained = load_trained(config, workdir, model, tokenizer, adapter)

    d = config.decode
    pad_id = pad_id_of(tokenizer)
    banned = newline_token_ids(tokenizer) if d.ban_newline else ()
    hypotheses, references, sources = [], [], []
    generated, start = 0, time.perf_counter()
    label = split if data is None else Path(data).name
    bar = tqdm(total=len(groups), desc=f"decode {label}", unit="src", dynamic_ncols=True)
    encoding = experiment.encode_config(config)
    if experiment.is_encoder_decoder(model):
        batches = pair_eval_batches(groups, tokenizer, d.batch_size, config=encoding)
    else:
        batches = eval_batches(groups, tokenizer, d.batch_size, config=encoding)
    for batch in batches:
        sequences = decode_batch(trained, batch, d, tokenizer.eos_token_id, pad_id, banned)
        sequences = np.asarray(jax.device_get(sequences))
        for row in np.flatnonzero(batch["valid"]):
            ids, n = until_eos(sequences[row], tokenizer.eos_token_id)
            generated += n
            text = tokenizer.decode(ids, skip_special_tokens=True)
            hypotheses.append(" ".join(text.split()))
            references.append(batch["references"][row])
            sources.append(batch["sources"][row])
        elapsed = time.perf_counter() - start
        bar.update(int(batch["valid"].sum()))
        bar.set_postfix(tok_s=f"{generated / max(elapsed, 1e-9):.0f}")
    bar.close()
    decode_s = time.perf_counter() - start

    scores = score(task, hypotheses, references, meteor_jar)
    out = output_dir(workdir, split=split, data=data, tag=tag)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.txt").write_text("".join(h + "\n" for h in hypotheses))
    with open(out / "predictions.jsonl", "w") as f:
        for src, hyp, refs in zip(sources, hypotheses, references, strict=True):
            f.write(json.dumps({"source": src, "prediction": hyp, "references": refs}) + "\n")
    results = {
        "split": split if data is None else None,
        "data": data_name,
        "task": task,
        "method": config.method if adapter is not None else "none",
        "weights": trained.source,
        "num_sources": len(hypotheses),
        "metrics": scores,
        "notes": notes,
        "decode": config.decode.to_dict(),
        "decode_s": decode_s,
        "generated_tokens_per_s": generated / max(decode_s, 1e-9),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def decode_batch(
    trained: Trained,
    batch: dict,
    d: ml_collections.ConfigDict,
    eos_id: int | None,
    pad_id: int,
    banned: tuple[int, ...],
) -> jax.Array:
    """Beam search of one evaluation batch: prompts of a decoder-only model, or the
    sources (`source`, `source_mask`) of an encoder-decoder."""
    options = {
        "beam_size": d.beam_size,
        "max_new_tokens": d.max_new_tokens,
        "prefix": trained.prefix,
        "eos_id": eos_id,
        "pad_id": pad_id,
        "length_penalty": d.length_penalty,
        "min_new_tokens": d.min_new_tokens,
        "banned_ids": banned,
    }
    if "source" in batch:
        sequences, _ = beam_search_seq2seq(
            trained.model, batch["source"], batch["source_mask"], **options
        )
    else:
        sequences, _ = beam_search(
            trained.model, batch["tokens"], batch["attention_mask"], **options
        )
    return sequences


def _meteor_jar(config: ml_collections.ConfigDict) -> tuple[Path | None, list[str]]:
    """(the configured METEOR jar, else pycocoevalcap's; [the line saying how to get what is
    missing]); a configured jar that does not exist fails now, not after decoding."""
    configured = config.meteor_jar
    if configured and not Path(configured).expanduser().is_file():
        raise FileNotFoundError(f"meteor_jar {configured} not found")
    jar = Path(configured).expanduser() if configured else metrics.find_meteor_jar()
    missing = metrics.meteor_unavailable(jar)
    return jar, [missing] if missing else []


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
