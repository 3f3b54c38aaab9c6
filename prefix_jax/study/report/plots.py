"""The report's figures: the metric against each numeric swept key (or per setting), and
the training-loss curves. Drawn on matplotlib `Figure`s without pyplot: no GUI backend and
no global state.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefix_jax.study.report.stats import numeric_axes
from prefix_jax.study.sweep import format_value


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
