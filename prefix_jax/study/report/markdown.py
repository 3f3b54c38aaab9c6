"""report.md: the settings table, the selection, how the results were made, the trials
without results, the plots."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from prefix_jax.study.bootstrap import SAMPLES as BOOTSTRAP_SAMPLES
from prefix_jax.study.bootstrap import SEED as BOOTSTRAP_SEED
from prefix_jax.study.provenance import describe_machine
from prefix_jax.study.report.runs import commit_label
from prefix_jax.study.report.stats import interval_metrics, metric_names
from prefix_jax.study.report.tables import cell
from prefix_jax.study.sweep import format_value

_STATUSES = ("finished", "failed", "incomplete", "missing")


def _pm(stat: tuple[float | None, float | None, int], fmt: str = ".4g") -> str:
    mean, std, _ = stat
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" if std is None else f"{mean:{fmt}} ± {std:{fmt}}"


def params_cell(params: float | None, total: float | None) -> str:
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
    metrics = metric_names(groups)
    intervals = interval_metrics(groups)
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
        size = params_cell(params, total)
        cells = [cell(g["setting"][k]) for k in axes]
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


def _managed_jobs(launch: dict) -> str:
    """One launch's SkyPilot jobs: resources, bucket, commit and job ids."""
    res = launch.get("resources") or {}
    nodes = res.get("num_nodes", 1)
    what = f"{res.get('accelerators', '?')}" + (f" x {nodes} nodes" if nodes > 1 else "")
    where = "/".join(res[k] for k in ("cloud", "region", "zone") if res.get(k))
    extras = [x for x in (where, "spot" if res.get("spot") else "", res.get("bucket")) if x]
    jobs = ", ".join(str(j) for j in launch["jobs"])
    return (
        f"- SkyPilot managed jobs at `{commit_label(launch)}`: {len(launch['jobs'])} on {what}"
        + (f" ({', '.join(extras)})" if extras else "")
        + f", job ids {jobs}"
    )


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
    commits = {label: 0 for label in ["not recorded", *map(commit_label, launches)]}
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
    lines += [_managed_jobs(e) for e in launches if e.get("jobs")]
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
