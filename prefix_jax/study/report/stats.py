"""Trials grouped into settings (the trials that differ only in their seeds), with mean and
spread over seeds, bootstrap intervals, and the choices made from them: a key's value by
validation loss, the metric to plot, the numeric keys to plot against.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from prefix_jax.study.bootstrap import bootstrap_bleu
from prefix_jax.study.report.runs import CI_METRIC, SUMMARY_FIELDS, TIME_FIELDS
from prefix_jax.study.sweep import seed_of, setting_label


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


def metric_names(groups: Sequence[dict]) -> list[str]:
    names: list[str] = []
    for g in groups:
        names += [k for k in g["stats"] if k not in names]
    return [n for n in names if n not in (*SUMMARY_FIELDS, *TIME_FIELDS)]


def interval_metrics(items: Sequence[dict]) -> list[str]:
    """Metrics with a bootstrap interval in any of these trials or groups."""
    return [CI_METRIC] if any(CI_METRIC in item.get("ci", {}) for item in items) else []


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


def choose_metric(groups: Sequence[dict], wanted: str) -> str | None:
    """`wanted` if any setting has it; else the first metric with values, else eval_loss."""
    names = [*metric_names(groups), "eval_loss"]
    have = [n for n in names if any(g["stats"].get(n, (None,))[0] is not None for g in groups)]
    if wanted in have:
        return wanted
    return have[0] if have else None
