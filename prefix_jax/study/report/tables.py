"""The report's CSV tables: one row per trial, per setting, per selection."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefix_jax.study.report.runs import SUMMARY_FIELDS, TIME_FIELDS
from prefix_jax.study.report.stats import interval_metrics, metric_names
from prefix_jax.study.sweep import format_value


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return format_value(value) if isinstance(value, bool | int | str) else str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[cell(v) for v in row] for row in rows])


Table = tuple[list[str], list[list[Any]]]


def trials_table(trials: Sequence[dict], axes: Sequence[str], seed_keys: Sequence[str]) -> Table:
    """Header and rows of trials.csv."""
    metrics: list[str] = []
    for t in trials:
        metrics += [m for m in t["metrics"] if m not in metrics]
    fields = ["steps", *SUMMARY_FIELDS, *TIME_FIELDS]
    intervals = interval_metrics(trials)
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


def summary_table(groups: Sequence[dict], axes: Sequence[str]) -> Table:
    """Header and rows of summary.csv: per setting, mean and std of every number."""
    metrics = metric_names(groups)
    numbers = [*metrics, *SUMMARY_FIELDS, *TIME_FIELDS]
    intervals = interval_metrics(groups)
    header = [*axes, "trials", "finished", "seeds"]
    for m in numbers:
        header += [f"{m}_mean", f"{m}_std"]
        if m in intervals:
            header += [f"{m}_ci_low", f"{m}_ci_high"]
    rows = []
    for g in groups:
        row = [*(g["setting"][k] for k in axes), g["n"], g["finished"]]
        row.append(" ".join(cell(s) for s in g["seeds"]))
        for m in numbers:
            mean, std, _ = g["stats"].get(m, (None, None, 0))
            row += [mean, std]
            if m in intervals:
                row += list(g.get("ci", {}).get(m, (None, None)))
        rows.append(row)
    return header, rows


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
