r"""Collect a sweep's trials into tables and plots.

    python -m prefix_jax.study.report runs/pl [--metric BLEU] [--split validation] [--out DIR]

Reads every trial directory under the sweep root (`trial.json` from the launcher for the
overrides, `train_summary.json`, `eval_<split>/results.json`, `metrics.jsonl`, `FAILED`) and
`sweep.json` for trials that were planned but never started. Writes into the root (or
`--out`):

- `trials.csv`: one row per trial, every status, with its metrics, loss, size and time;
- `summary.csv` and `report.md`: one row per setting (the overrides other than seeds) with
  mean and sample standard deviation (n - 1) over its seeds, trainable parameters and wall
  time; failed, incomplete and missing trials are listed, not dropped;
- `metric_vs_<key>.png` for each numeric swept key (e.g. `metric_vs_prefix_length.png`, the
  shape of Li & Liang's Fig. 4), one line per setting of the other keys (reparam, method),
  with error bars over seeds; `metric_by_setting.png` when no key is numeric;
- `train_loss.png`: training loss against step for every trial, coloured by setting.

`report.md` ends with how the results were made, from the launcher's `launch.jsonl`: the
launch commands, the commit each trial started at, the machines, the devices trials
trained on (`train_summary.json`) and the compute time; `trials.csv` has each trial's
commit and time.

Test-set uncertainty: where a trial's `eval_<split>/predictions.jsonl` exists (evaluate writes
source, prediction and references per line) and its results have BLEU, the report adds a
bootstrap 95% interval of corpus BLEU over the evaluated sources: 1000 resamples of the
sources with replacement (fixed RNG seed 0, so reruns give the same interval), corpus BLEU
recomputed from per-source n-gram statistics (`prefix_jax.metrics.bleu_segment_stats`, the
project's mteval-v13a BLEU), percentile interval. Per trial in `trials.csv`; per setting
(`summary.csv`, `report.md`) the interval is of the *mean over seeds*: each resample draws
one set of sources and applies it to every seed (paired, as the seeds share the held-out
sources), so it measures how much the choice of held-out sources moves the seed-averaged
score; the spread over seeds is the ± std beside it. Plots show each seed as a point.

Questions: a sweep may declare `Contrast`s (is setting a ahead of b?, in `sweep.json`);
each is answered in `contrasts.csv` and a section of `report.md` with the BLEU difference,
the per-seed differences and a paired bootstrap interval over the same sources
(`experiments/contrasts.py`).

`--select KEY` (default `optim.learning_rate`) picks, per setting of the other keys, the
value of KEY with the lowest mean validation loss (`eval_loss` of `train_summary.json`) and
writes `selection.csv` and a section of `report.md` with the chosen values as a Python dict
(for `experiments/sweeps/_learning_rates.py`); it is skipped when no setting has two values.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefix_jax.metrics.bleu import bleu_segment_stats
from prefix_jax.study.bootstrap import SAMPLES as BOOTSTRAP_SAMPLES
from prefix_jax.study.bootstrap import SEED as BOOTSTRAP_SEED
from prefix_jax.study.bootstrap import bootstrap_bleu
from prefix_jax.study.contrasts import answer_all, contrasts_markdown, contrasts_table
from prefix_jax.study.provenance import describe_machine
from prefix_jax.study.sweep import format_value, seed_of, setting_label

DEFAULT_SEED_KEYS = ("seed", "prefix.seed")
CI_METRIC = "BLEU"
BLEU_MAX_N = 4
SUMMARY_FIELDS = ("eval_loss", "final_train_loss", "params_trainable", "params_total")
TIME_FIELDS = ("wall_s", "decode_s")
_STATUSES = ("finished", "failed", "incomplete", "missing")


def _load_json(path: Path) -> Any:
    """Parsed JSON, or None if the file is missing or unreadable (a trial still running)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _scalar(value: Any) -> Any:
    """Override values as hashable scalars (a hand-written trial.json may hold lists)."""
    return (
        value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)
    )


def read_loss_curve(path: Path, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of `key` from metrics.jsonl, sorted, last value per step (a
    resumed run may log a step twice)."""
    points: dict[int, float] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interruption
        value = _number(row.get(key)) if isinstance(row, dict) else None
        if value is not None and isinstance(row.get("step"), int):
            points[row["step"]] = value
    return sorted(points.items())


def read_bleu_stats(path: Path) -> tuple[list[str], np.ndarray] | None:
    """(sources, per-source BLEU statistics [n_sources, 2 * 4 + 2]) of an evaluate run's
    predictions.jsonl, or None if it is missing or unreadable."""
    if not path.exists():
        return None
    sources, hypotheses, references = [], [], []
    try:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                sources.append(row["source"])
                hypotheses.append(row["prediction"])
                references.append(row["references"])
        stats = bleu_segment_stats(hypotheses, references, BLEU_MAX_N)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sources, np.asarray(stats, dtype=np.float64)


def add_intervals(trials: Sequence[dict], groups: Sequence[dict], samples: int) -> None:
    """`ci` of every trial with predictions and of every group (over its seeds that have
    them): {"BLEU": (low, high)}."""
    for t in trials:
        t["ci"] = {}
        if samples and t.get("bleu_stats") is not None:
            _, low, high = bootstrap_bleu([t["bleu_stats"]], samples)
            t["ci"][CI_METRIC] = (low, high)
    for g in groups:
        g["ci"] = {}
        runs = [t["bleu_stats"] for t in g["trials"] if t.get("bleu_stats") is not None]
        if samples and runs:
            _, low, high = bootstrap_bleu(runs, samples)
            g["ci"][CI_METRIC] = (low, high)


def read_trial(tdir: Path, split: str = "validation") -> dict:
    """One trial's record: status, overrides, metrics, summary numbers, error, loss curve."""
    info = _load_json(tdir / "trial.json") or {}
    summary = _load_json(tdir / "train_summary.json") or {}
    results = _load_json(tdir / f"eval_{split}" / "results.json")
    failed = tdir / "FAILED"
    if results is not None:
        status = "finished"
    elif failed.exists():
        status = "failed"
    else:
        status = "incomplete"
    error = ""
    if status == "failed":
        lines = failed.read_text(errors="replace").splitlines()
        error = next(
            (ln[7:] for ln in lines if ln.startswith("error: ")), lines[0] if lines else ""
        )
    metrics = {k: _number(v) for k, v in ((results or {}).get("metrics") or {}).items()}
    record = {
        "name": tdir.name,
        "dir": str(tdir),
        "status": status,
        # A directory not made by the launcher is its own setting.
        "overrides": {k: _scalar(v) for k, v in info.get("overrides", {"run": tdir.name}).items()},
        "seed_keys": info.get("seed_keys"),
        "metrics": metrics,
        "steps": summary.get("steps"),
        "decode_s": _number((results or {}).get("decode_s")),
        "error": error,
        "loss_curve": read_loss_curve(tdir / "metrics.jsonl"),
        "bleu_stats": None,
    }
    if status == "finished" and metrics.get(CI_METRIC) is not None:
        record["bleu_stats"] = read_bleu_stats(tdir / f"eval_{split}" / "predictions.jsonl")
    for key in (*SUMMARY_FIELDS, "wall_s"):
        record[key] = _number(summary.get(key))
    record["accelerator"] = summary.get("device_kind") or summary.get("platform")
    return record


def _commit_label(launch: dict | None) -> str:
    """`abc123def456`, with `+dirty` when tracked files differed; `not recorded` for trials
    started by a launcher that did not log its commit."""
    if launch is None:
        return "not recorded"
    label = (launch.get("commit") or "unknown")[:12]
    return label + ("+dirty" if launch.get("dirty") else "")


def read_launch_log(root: Path) -> tuple[list[dict], dict[str, dict]]:
    """The launcher's `launch` events (command, commit, machine; `ran` where it started a
    trial), and per trial the commits its starts ran at and the seconds of its completed
    commands (`launch.jsonl`)."""
    launches: list[dict] = []
    per_trial: dict[str, dict] = {}
    path = root / "launch.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    current = None
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed launcher
        kind = event.get("event")
        if kind == "launch":
            launches.append(event)
            current = event
            continue
        if "trial" not in event:
            continue
        record = per_trial.setdefault(event["trial"], {"commits": [], "seconds": {}})
        if kind == "started":
            if current is not None:
                current["ran"] = True  # marks launches that did work, apart from no-op relaunches
            if _commit_label(current) not in record["commits"]:
                record["commits"].append(_commit_label(current))
        elif kind == "step":
            record["seconds"][event.get("step")] = _number(event.get("seconds"))
    return launches, per_trial


def add_provenance(trials: Sequence[dict], per_trial: dict[str, dict]) -> None:
    """Each trial's `commit` and `compute_s`: the seconds of its train and evaluate commands
    where the launcher logged them, else training wall time plus decoding time."""
    for t in trials:
        logged = per_trial.get(t["name"], {"commits": [], "seconds": {}})
        t["commits"] = logged["commits"] or ["not recorded"]
        seconds = logged["seconds"]
        if t["status"] != "finished":
            t["compute_s"] = None
        elif seconds.get("train") is not None and seconds.get("evaluate") is not None:
            t["compute_s"] = seconds["train"] + seconds["evaluate"]
        else:
            parts = [t.get("wall_s"), t.get("decode_s")]
            t["compute_s"] = None if None in parts else sum(parts)


def provenance_markdown(
    trials: Sequence[dict], launches: Sequence[dict], command: str | None
) -> list[str]:
    """The report's "How this was made" section: commands, commits, machines, time."""
    lines = ["## How this was made", ""]
    commands = list(dict.fromkeys(e.get("command") for e in launches if e.get("command")))
    if commands:
        ran = sum(1 for e in launches if e.get("ran"))
        idle = len(launches) - ran
        count = f"{ran} launch{'es' * (ran != 1)} that ran trials"
        if idle:
            count += f", {idle} more that started none"
        lines.append(f"- Launched ({count}) with:")
        lines += [f"  - `{c}`" for c in commands]
    else:
        lines.append("- Launch commands: not recorded (launched before the launcher logged them).")
    if command:
        lines.append(f"- Report: `{command}`")
    started = [t for t in trials if t["status"] != "missing"]
    # In the order the code ran: trials from before commits were logged, then each launch.
    commits = {label: 0 for label in ["not recorded", *map(_commit_label, launches)]}
    for t in started:
        for label in t.get("commits") or ["not recorded"]:
            commits[label] = commits.get(label, 0) + 1
    if any(commits.values()):
        lines.append(
            "- Code (trials started at each commit; a resumed trial counts at each): "
            + ", ".join(
                f"`{c}` {n}" if c != "not recorded" else f"{c} {n}" for c, n in commits.items() if n
            )
        )
    machines = list(
        dict.fromkeys(describe_machine(e["machine"]) for e in launches if e.get("machine"))
    )
    lines += [f"- Machine: {m}" for m in machines]
    accelerators: dict[str, int] = {}
    for t in started:
        if t.get("accelerator"):
            accelerators[t["accelerator"]] = accelerators.get(t["accelerator"], 0) + 1
    if accelerators:
        lines.append(
            "- Devices trained on: "
            + ", ".join(f"{k} ({n} trial{'s' * (n != 1)})" for k, n in accelerators.items())
        )
    times = [t["compute_s"] for t in trials if t.get("compute_s") is not None]
    if times:
        lines.append(
            f"- Compute: {sum(times) / 3600:.2f} h over {len(times)} finished trials "
            f"(train and evaluate commands; {statistics.median(times) / 60:.1f} min median)."
        )
    return lines


def collect(root: str | Path, split: str = "validation") -> tuple[list[dict], dict]:
    """All trials under `root` (plus 'missing' ones planned in sweep.json) and sweep info."""
    root = Path(root)
    sweep = _load_json(root / "sweep.json") or {}
    markers = ("trial.json", "config.json", "FAILED")
    dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)
    )
    trials = [read_trial(d, split) for d in dirs]
    seen = {t["name"] for t in trials}
    for planned in sweep.get("trials", []):
        if planned["name"] not in seen:
            trials.append(
                {
                    "name": planned["name"],
                    "dir": str(root / planned["name"]),
                    "status": "missing",
                    "overrides": planned["overrides"],
                    "seed_keys": sweep.get("seed_keys"),
                    "metrics": {},
                    "error": "",
                    "loss_curve": [],
                    "bleu_stats": None,
                }
            )
    # The sweep's order (it fixes the order of non-numeric values in tables and plots).
    planned_order = {t["name"]: i for i, t in enumerate(sweep.get("trials", []))}
    trials.sort(key=lambda t: planned_order.get(t["name"], len(planned_order)))
    return trials, sweep


def seed_keys_of(trials: Sequence[dict], sweep: dict) -> list[str]:
    """Keys averaged over: what the launcher recorded, else the default seed keys."""
    keys: list[str] = []
    for source in [*(t.get("seed_keys") for t in trials), sweep.get("seed_keys")]:
        keys += [k for k in source or [] if k not in keys]
    return keys or list(DEFAULT_SEED_KEYS)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None below two values) and count, ignoring None."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def _sort_key(value: Any, first_seen: dict | None = None) -> tuple:
    """Numbers ascending, then other values in the order they were first seen (the sweep's
    order, e.g. reparam none before mlp), then absent values."""
    if value is None:
        return (2, 0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, (first_seen or {}).get(value, 0))


def group_trials(trials: Sequence[dict], seed_keys: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Groups of trials that differ only in their seeds, with statistics; and the axis keys.

    Every numeric field is averaged over the group's trials that have it (metrics exist
    only for finished trials); groups are sorted by their override values (numbers
    ascending, other values in the order the trials list them).
    """
    axes: list[str] = []
    for t in trials:
        axes += [k for k in t["overrides"] if k not in seed_keys and k not in axes]
    metric_names: list[str] = []
    for t in trials:
        metric_names += [m for m in t["metrics"] if m not in metric_names]
    first_seen: dict[str, dict] = {k: {} for k in axes}
    for t in trials:
        for k in axes:
            first_seen[k].setdefault(t["overrides"].get(k), len(first_seen[k]))
    groups: dict[tuple, dict] = {}
    for t in trials:
        values = tuple(t["overrides"].get(k) for k in axes)
        group = groups.setdefault(values, {"setting": dict(zip(axes, values, strict=True))})
        group.setdefault("trials", []).append(t)
    out = []

    def order(values: tuple) -> tuple:
        return tuple(_sort_key(v, first_seen[k]) for k, v in zip(axes, values, strict=True))

    for values in sorted(groups, key=order):
        group = groups[values]
        members = group["trials"]
        group["n"] = len(members)
        group["finished"] = sum(t["status"] == "finished" for t in members)
        group["seeds"] = [
            seed_of(t["overrides"], seed_keys) for t in members if t["status"] == "finished"
        ]
        stats = {}
        for m in metric_names:
            stats[m] = mean_std([t["metrics"].get(m) for t in members])
        for field in (*SUMMARY_FIELDS, *TIME_FIELDS):
            stats[field] = mean_std([t.get(field) for t in members])
        group["stats"] = stats
        out.append(group)
    return out, axes


def _metric_names(groups: Sequence[dict]) -> list[str]:
    names: list[str] = []
    for g in groups:
        names += [k for k in g["stats"] if k not in names]
    return [n for n in names if n not in (*SUMMARY_FIELDS, *TIME_FIELDS)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return format_value(value) if isinstance(value, bool | int | str) else str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[_cell(v) for v in row] for row in rows])


Table = tuple[list[str], list[list[Any]]]


def trials_table(trials: Sequence[dict], axes: Sequence[str], seed_keys: Sequence[str]) -> Table:
    """Header and rows of trials.csv."""
    metrics: list[str] = []
    for t in trials:
        metrics += [m for m in t["metrics"] if m not in metrics]
    fields = ["steps", *SUMMARY_FIELDS, *TIME_FIELDS]
    intervals = _interval_metrics(trials)
    header = ["trial", "status", *axes, "seed", *metrics]
    header += [f"{m}_ci_{end}" for m in intervals for end in ("low", "high")]
    header += [*fields, "compute_s", "accelerator", "commit", "error"]
    rows = []
    for t in trials:
        o = t["overrides"]
        seed = next((o[k] for k in seed_keys if k in o), None)
        ci = [v for m in intervals for v in t.get("ci", {}).get(m, (None, None))]
        rows.append(
            [
                t["name"],
                t["status"],
                *(o.get(k) for k in axes),
                seed,
                *(t["metrics"].get(m) for m in metrics),
                *ci,
                *(t.get(f) for f in fields),
                t.get("compute_s"),
                t.get("accelerator"),
                " ".join(t.get("commits") or []),
                t["error"],
            ]
        )
    return header, rows


def _interval_metrics(items: Sequence[dict]) -> list[str]:
    """Metrics with a bootstrap interval in any of these trials or groups."""
    return [CI_METRIC] if any(CI_METRIC in item.get("ci", {}) for item in items) else []


def summary_table(groups: Sequence[dict], axes: Sequence[str]) -> Table:
    """Header and rows of summary.csv: per setting, mean and std of every number."""
    metrics = _metric_names(groups)
    numbers = [*metrics, *SUMMARY_FIELDS, *TIME_FIELDS]
    intervals = _interval_metrics(groups)
    header = [*axes, "trials", "finished", "seeds"]
    for m in numbers:
        header += [f"{m}_mean", f"{m}_std"]
        if m in intervals:
            header += [f"{m}_ci_low", f"{m}_ci_high"]
    rows = []
    for g in groups:
        row = [*(g["setting"][k] for k in axes), g["n"], g["finished"]]
        row.append(" ".join(_cell(s) for s in g["seeds"]))
        for m in numbers:
            mean, std, _ = g["stats"].get(m, (None, None, 0))
            row += [mean, std]
            if m in intervals:
                row += list(g.get("ci", {}).get(m, (None, None)))
        rows.append(row)
    return header, rows


def _pm(stat: tuple[float | None, float | None, int], fmt: str = ".4g") -> str:
    mean, std, _ = stat
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" if std is None else f"{mean:{fmt}} ± {std:{fmt}}"


def _params_cell(params: float | None, total: float | None) -> str:
    """Trainable parameters and their share, to 3 digits so that all of them reads 100%."""
    if params is None:
        return "-"
    share = f" ({100 * params / total:.3g}%)" if total else ""
    return f"{params:,.0f}{share}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(
    groups: Sequence[dict],
    axes: Sequence[str],
    trials: Sequence[dict],
    title: str,
    plots: Sequence[Path] = (),
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    selection: Sequence[dict] = (),
    questions: Sequence[str] = (),
    provenance: Sequence[str] = (),
) -> str:
    """report.md: the settings table (mean ± std over seeds, bootstrap interval), the
    sweep's questions answered, the selection by validation loss, how it was made,
    problems, plots."""
    metrics = _metric_names(groups)
    intervals = _interval_metrics(groups)
    columns = [c for m in metrics for c in (m, *([f"{m} 95% CI"] if m in intervals else []))]
    header = [*axes, "seeds", *columns, "eval loss", "trainable params", "train wall (s)"]
    lines = [f"# {title}", ""]
    counts = {s: sum(t["status"] == s for t in trials) for s in _STATUSES}
    lines.append(
        f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + "."
    )
    lines += ["", "| " + " | ".join(_md(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    for g in groups:
        params, _, _ = g["stats"]["params_trainable"]
        total, _, _ = g["stats"]["params_total"]
        size = _params_cell(params, total)
        cells = [_cell(g["setting"][k]) for k in axes]
        cells.append(f"{g['finished']}/{g['n']}")
        for m in metrics:
            cells.append(_pm(g["stats"][m]))
            if m in intervals:
                ci = g.get("ci", {}).get(m)
                cells.append("-" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]")
        cells += [_pm(g["stats"]["eval_loss"]), size, _pm(g["stats"]["wall_s"], ".0f")]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation (n - 1) over the finished seeds of each setting;",
        "`seeds` is finished/planned. Metrics are from `results.json`, the rest from "
        "`train_summary.json`.",
    ]
    if intervals:
        lines += [
            f"{', '.join(intervals)} 95% CI: percentile bootstrap over the evaluated sources "
            f"({samples} resamples, seed {BOOTSTRAP_SEED}) of the seed-averaged corpus score, "
            "one draw of sources shared by the seeds (test-set uncertainty; the ± is the "
            "spread over seeds).",
        ]
    if questions:
        lines += ["", *questions]
    if selection:
        lines += ["", *selection_markdown(selection)]
    if provenance:
        lines += ["", *provenance]
    problems = [t for t in trials if t["status"] != "finished"]
    if problems:
        lines += ["", "## Trials without results", ""]
        for t in problems:
            detail = {
                "failed": f"failed: {t['error']}",
                "incomplete": "incomplete (interrupted or still running)",
                "missing": "missing (planned, never started)",
            }[t["status"]]
            lines.append(f"- `{t['name']}`: {_md(detail)}")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def select_by_loss(
    groups: Sequence[dict], axes: Sequence[str], key: str, loss: str = "eval_loss"
) -> list[dict]:
    """Per setting of the axes other than `key`, the value of `key` whose trials have the
    lowest mean `loss` (validation loss); settings with a single candidate are left out.

    Each row: `setting`, `label` (`k=v,...` of the other keys), `value`, `loss`, `seeds`
    (trials averaged), `candidates` [(value, mean loss)] and `edge` (the choice is the
    smallest or largest value tried, so the grid may need extending).
    """
    others = [k for k in axes if k != key]
    found: dict[tuple, dict] = {}
    for g in groups:
        mean, _, n = g["stats"].get(loss, (None, None, 0))
        value = g["setting"].get(key)
        if mean is None or value is None:
            continue
        rest = tuple(g["setting"][k] for k in others)
        row = found.setdefault(
            rest,
            {
                "setting": {k: v for k, v in zip(others, rest, strict=True) if v is not None},
                "candidates": [],
            },
        )
        row["candidates"].append((value, mean, n))
    out = []
    for row in found.values():
        candidates = sorted(row.pop("candidates"), key=lambda c: _sort_key(c[0]))
        if len(candidates) < 2:
            continue
        value, best, n = min(candidates, key=lambda c: c[1])
        label = setting_label(row["setting"])
        edge = value in (candidates[0][0], candidates[-1][0])
        out.append(
            {
                **row,
                "key": key,
                "label": label,
                "value": value,
                "loss": best,
                "seeds": n,
                "candidates": [(v, m) for v, m, _ in candidates],
                "edge": edge,
            }
        )
    return out


def selection_table(selection: Sequence[dict]) -> Table:
    """Header and rows of selection.csv."""
    header = ["setting", "key", "chosen", "eval_loss", "seeds", "edge_of_grid", "candidates"]
    rows = [
        [
            r["label"],
            r["key"],
            r["value"],
            r["loss"],
            r["seeds"],
            r["edge"],
            " ".join(f"{format_value(v)}:{m:.4f}" for v, m in r["candidates"]),
        ]
        for r in selection
    ]
    return header, rows


def selection_markdown(selection: Sequence[dict]) -> list[str]:
    """report.md section: the chosen values, the losses they were chosen on, a dict."""
    key = selection[0]["key"]
    lines = [f"## `{key}` chosen by validation loss", ""]
    lines += ["| setting | chosen | eval loss | candidates (value: mean eval loss) |"]
    lines += ["|---|---:|---:|---|"]
    for r in selection:
        candidates = ", ".join(f"{format_value(v)}: {m:.4f}" for v, m in r["candidates"])
        chosen = format_value(r["value"]) + (" (edge of grid)" if r["edge"] else "")
        lines.append(
            f"| {_md(r['label'] or '(base)')} | {chosen} | {r['loss']:.4f} | {_md(candidates)} |"
        )
    lines += ["", "Lowest mean `eval_loss` over seeds per setting. As a dict:", "", "```python"]
    lines += ["{"] + [
        f"    {json.dumps(r['label'])}: {format_value(r['value'])}," for r in selection
    ]
    lines += ["}", "```"]
    return lines


def _new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=(width, height), layout="constrained")


def _figure(width: float = 6.4, height: float = 4.4):
    fig = _new_figure(width, height)
    return fig, fig.subplots()


def _legend_below(fig, *entries) -> None:
    """Settings' labels are long (`key=value, ...`): below the axes they hide no data, and
    the tight bounding box widens the image to fit them. `entries`: (handles, labels) in the
    order to list them, where not the order drawn."""
    fig.legend(*entries, fontsize="small", loc="outside lower center")


def _label(setting: dict, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={format_value(setting[k])}" for k in keys if setting[k] is not None)


def numeric_axes(groups: Sequence[dict], axes: Sequence[str]) -> list[str]:
    """Swept numeric keys that some two settings differ in alone: candidate x axes. A value
    fixed per method, or per method and reparameterization together (a learning rate per
    setting), never varies alone, so it draws no line of two points."""

    def is_numeric(key: str) -> bool:
        values = {g["setting"][key] for g in groups if g["setting"][key] is not None}
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)

    def varies_alone(key: str) -> bool:
        values_by_rest: dict[tuple, set] = {}
        for g in groups:
            if g["setting"][key] is not None:
                rest = tuple(g["setting"][k] for k in axes if k != key)
                values_by_rest.setdefault(rest, set()).add(g["setting"][key])
        return any(len(values) >= 2 for values in values_by_rest.values())

    return [key for key in axes if is_numeric(key) and varies_alone(key)]


def plot_metric_vs(
    groups: Sequence[dict], axes: Sequence[str], key: str, metric: str, path: Path, title: str
) -> bool:
    """`metric` against `key`, one line per setting of the other keys, std error bars, each
    seed as a point and the bootstrap interval (where there is one) as a band; settings
    without `key` (e.g. a LoRA baseline in a prefix-length sweep) are dashed horizontal
    lines with their seeds as ticks at the right edge."""
    others = [k for k in axes if k != key]
    lines: dict[tuple, list[tuple[float, float, float, tuple | None]]] = {}
    seeds: dict[tuple, list[tuple[float, float]]] = {}
    labels: dict[tuple, str] = {}
    baselines: list[tuple[str, float, list[float]]] = []
    for g in groups:
        mean, std, _ = g["stats"].get(metric, (None, None, 0))
        x = g["setting"][key]
        if mean is None:
            continue
        values = [t["metrics"].get(metric, t.get(metric)) for t in g["trials"]]
        values = [v for v in values if v is not None]
        if x is None:
            baselines.append((_label(g["setting"], others) or "(base)", mean, values))
            continue
        rest = tuple(g["setting"][k] for k in others)
        lines.setdefault(rest, []).append((x, mean, std or 0.0, g.get("ci", {}).get(metric)))
        seeds.setdefault(rest, []).extend((x, v) for v in values)
        labels[rest] = _label(g["setting"], others) or metric
    if not lines:
        return False
    fig, ax = _figure()
    for i, rest in enumerate(lines):  # groups come sorted, so lines are in the sweep's order
        points = sorted(lines[rest], key=lambda p: p[0])
        xs, ys, es, cis = zip(*points, strict=True)
        colour = f"C{i % 10}"
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colour, label=labels[rest])
        if seeds[rest]:
            sx, sy = zip(*seeds[rest], strict=True)
            ax.scatter(sx, sy, s=14, color=colour, alpha=0.5, zorder=3, linewidths=0)
        band = [(x, ci) for x, ci in zip(xs, cis, strict=True) if ci is not None]
        if band:
            bx = [x for x, _ in band]
            ax.fill_between(
                bx,
                [c[0] for _, c in band],
                [c[1] for _, c in band],
                color=colour,
                alpha=0.12,
                linewidth=0,
            )
    xs_all = [p[0] for pts in lines.values() for p in pts]
    for (label, mean, values), style in zip(baselines, itertools.cycle(["--", ":", "-."])):
        ax.axhline(mean, linestyle=style, color="gray", label=label)
        if values:  # the baseline's seeds as ticks at the right edge
            ax.scatter([max(xs_all)] * len(values), values, marker="_", s=120, color="gray")
    if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(lines) + len(baselines) > 1 or others:
        _legend_below(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def plot_metric_by_setting(
    groups: Sequence[dict], axes: Sequence[str], metric: str, path: Path, title: str
) -> bool:
    """Horizontal bars of `metric` per setting, for sweeps without a numeric axis."""
    rows = [(g, g["stats"].get(metric, (None, None, 0))) for g in groups]
    rows = [(g, s) for g, s in rows if s[0] is not None]
    if not rows:
        return False
    fig, ax = _figure(height=1.2 + 0.35 * len(rows))
    names = [_label(g["setting"], axes) or "(base)" for g, _ in rows]
    ax.barh(names, [s[0] for _, s in rows], xerr=[s[1] or 0.0 for _, s in rows], capsize=3)
    for i, (g, _) in enumerate(rows):  # each seed as a point
        values = [t["metrics"].get(metric, t.get(metric)) for t in g["trials"]]
        values = [v for v in values if v is not None]
        ax.scatter(values, [i] * len(values), s=14, color="black", alpha=0.6, zorder=3)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(title)
    fig.savefig(path, dpi=120)
    return True


LEGEND_COLOURS = 10  # matplotlib's default cycle: more curves than this repeat a colour


Panel = tuple[str, list[tuple[int, int, str]]]  # title, [(group, colour, label)]


def _numeric_order(values: Sequence[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (v is None, 0.0 if v is None else float(v)))


def _layout(entries: Sequence[tuple], panel_order, colour_order) -> list[Panel] | None:
    """Panels from (group, panel value, panel title, colour value, label) entries; None when
    the colour values outnumber the colours a legend can tell apart."""
    colour_values = colour_order(list(dict.fromkeys(e[3] for e in entries)))
    if len(colour_values) > LEGEND_COLOURS:
        return None
    colour = {v: i for i, v in enumerate(colour_values)}
    panels: dict[Any, Panel] = {}
    for group, panel, title, colour_value, label in entries:
        panels.setdefault(panel, (title, []))[1].append((group, colour[colour_value], label))
    return [panels[v] for v in panel_order(list(panels))]


def loss_panels(groups: Sequence[dict], axes: Sequence[str]) -> list[Panel]:
    """Lay out the training-loss curves. Up to `LEGEND_COLOURS` settings share one panel, a
    colour each. Past that a legend cannot tell them apart, so the first numeric axis
    splits them, whichever way gives fewer panels: a panel per value (e.g. per training-set
    size, a colour per method, in the metric plot's order; settings without the key last),
    or a panel per setting of the other keys (e.g. per method, a colour per learning rate)."""
    if len(groups) <= LEGEND_COLOURS:
        return [("", [(i, i, _label(g["setting"], axes) or "loss") for i, g in enumerate(groups)])]
    unlabelled = [("", [(i, i % LEGEND_COLOURS, "") for i in range(len(groups))])]
    numeric = numeric_axes(groups, axes)
    if not numeric:
        return unlabelled
    key = numeric[0]
    others = [k for k in axes if k != key]
    value = {i: g["setting"][key] for i, g in enumerate(groups)}
    rest = {i: tuple(g["setting"][k] for k in others) for i, g in enumerate(groups)}
    rest_label = {i: _label(g["setting"], others) or "loss" for i, g in enumerate(groups)}
    value_label = {
        i: f"{key}={format_value(v)}" if v is not None else f"no {key}" for i, v in value.items()
    }
    by_value = [
        (i, value[i], value_label[i], rest[i], rest_label[i])
        for i in sorted(value, key=lambda i: value[i] is None)
    ]
    by_rest = [
        (i, rest[i], rest_label[i].replace(", ", "\n"), value[i], value_label[i]) for i in value
    ]
    layouts = [_layout(by_value, _numeric_order, list), _layout(by_rest, list, _numeric_order)]
    layouts = [layout for layout in layouts if layout is not None]
    return min(layouts, key=len) if layouts else unlabelled


def plot_train_loss(groups: Sequence[dict], axes: Sequence[str], path: Path, title: str) -> bool:
    """Training loss against step for every trial, laid out by `loss_panels`; seeds of a
    setting share a colour, and the legend names each colour once, in colour order."""
    if not any(t["loss_curve"] for g in groups for t in g["trials"]):
        return False
    panels = loss_panels(groups, axes)
    labelled = {colour for _, members in panels for _, colour, label in members if label}
    if len(panels) == 1:
        fig = _new_figure()
    else:
        fig = _new_figure(width=3.4 * len(panels), height=3.2 + 0.22 * len(labelled))
    legend: dict[int, tuple[Any, str]] = {}  # colour -> (one of its lines, its label)
    axs = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (panel_title, members) in zip(axs, panels, strict=True):
        for i, colour, label in members:
            for t in groups[i]["trials"]:
                if t["loss_curve"]:
                    steps, losses = zip(*t["loss_curve"], strict=True)
                    (line,) = ax.plot(steps, losses, color=f"C{colour}", alpha=0.8, linewidth=1.2)
                    if label:
                        legend.setdefault(colour, (line, label))
        ax.set_xlabel("step")
        ax.set_title(panel_title, fontsize="small")
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("training loss")
    fig.suptitle(title)
    if legend:
        _legend_below(fig, *zip(*(legend[c] for c in sorted(legend)), strict=True))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def choose_metric(groups: Sequence[dict], wanted: str) -> str | None:
    """`wanted` if any setting has it; else the first metric with values, else eval_loss."""
    names = [*_metric_names(groups), "eval_loss"]
    have = [n for n in names if any(g["stats"].get(n, (None,))[0] is not None for g in groups)]
    if wanted in have:
        return wanted
    return have[0] if have else None


def report(
    root: str | Path,
    out: str | Path | None = None,
    *,
    metric: str = "BLEU",
    split: str = "validation",
    bootstrap: int = BOOTSTRAP_SAMPLES,
    select: str | None = "optim.learning_rate",
    command: str | None = None,
) -> dict[str, Path]:
    """Write the CSVs, report.md and PNGs for the sweep under `root`; returns their paths.
    `bootstrap` resamples for the BLEU interval (0: none); `select` the key to choose by
    validation loss (None or a key that no setting varies: no selection); `command` the
    command line that made the report, quoted in it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    trials, sweep = collect(root, split)
    if not trials:
        raise FileNotFoundError(f"no trial directories under {root}")
    launches, per_trial = read_launch_log(root)
    add_provenance(trials, per_trial)
    seed_keys = seed_keys_of(trials, sweep)
    groups, axes = group_trials(trials, seed_keys)
    add_intervals(trials, groups, bootstrap)
    name = sweep.get("sweep") or root.name
    written: dict[str, Path] = {}
    answers = answer_all(groups, sweep.get("contrasts", []), seed_keys, bootstrap)
    if answers:
        write_csv(out / "contrasts.csv", *contrasts_table(answers))
        written["contrasts_csv"] = out / "contrasts.csv"
    selection = select_by_loss(groups, axes, select) if select in axes else []
    if selection:
        header, rows = selection_table(selection)
        write_csv(out / "selection.csv", header, rows)
        written["selection_csv"] = out / "selection.csv"

    header, rows = trials_table(trials, axes, seed_keys)
    write_csv(out / "trials.csv", header, rows)
    header, rows = summary_table(groups, axes)
    write_csv(out / "summary.csv", header, rows)
    written["trials_csv"], written["summary_csv"] = out / "trials.csv", out / "summary.csv"

    plots = []
    chosen = choose_metric(groups, metric)
    if chosen is not None:
        xs = numeric_axes(groups, axes)
        for key in xs:
            path = out / f"metric_vs_{key.replace('.', '_')}.png"
            if plot_metric_vs(groups, axes, key, chosen, path, f"{name}: {chosen} ({split})"):
                plots.append(path)
        if not xs:
            path = out / "metric_by_setting.png"
            if plot_metric_by_setting(groups, axes, chosen, path, f"{name}: {chosen} ({split})"):
                plots.append(path)
    if selection:
        path = out / f"eval_loss_vs_{select.replace('.', '_')}.png"
        title = f"{name}: validation loss"
        if plot_metric_vs(groups, axes, select, "eval_loss", path, title):
            plots.append(path)
    path = out / "train_loss.png"
    if plot_train_loss(groups, axes, path, f"{name}: training loss"):
        plots.append(path)
    written.update({p.stem: p for p in plots})

    title = f"Sweep `{name}` ({root})"
    provenance = provenance_markdown(trials, launches, command)
    text = markdown(
        groups,
        axes,
        trials,
        title,
        plots,
        samples=bootstrap,
        selection=selection,
        questions=contrasts_markdown(answers, bootstrap) if answers else (),
        provenance=provenance,
    )
    (out / "report.md").write_text(text)
    written["report_md"] = out / "report.md"
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write the report and print the Markdown table."""
    parser = argparse.ArgumentParser(
        prog="python -m prefix_jax.study.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", help="sweep directory (the launcher's --workdir)")
    parser.add_argument("--out", help="output directory (default: the sweep directory)")
    parser.add_argument("--metric", default="BLEU", help="metric to plot (default: BLEU)")
    parser.add_argument("--split", default="validation", help="evaluated split to read")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_SAMPLES,
        help=f"resamples for the BLEU interval over sources (default {BOOTSTRAP_SAMPLES}; 0: none)",
    )
    parser.add_argument(
        "--select",
        default="optim.learning_rate",
        help="key to choose per setting by lowest validation loss ('' for none)",
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    try:
        written = report(
            args.root,
            args.out,
            metric=args.metric,
            split=args.split,
            bootstrap=args.bootstrap,
            select=args.select or None,
            command=shlex.join(
                ["python", "-m", "prefix_jax.study.report", *(argv or sys.argv[1:])]
            ),
        )
    except FileNotFoundError as e:
        parser.error(str(e))
    print(written["report_md"].read_text())
    for key, path in written.items():
        if key != "report_md":
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
