"""Write a sweep's report: read the runs, group them, answer the questions, then the
CSVs, the plots and report.md."""

from __future__ import annotations

from pathlib import Path

from prefix_jax.study.bootstrap import SAMPLES as BOOTSTRAP_SAMPLES
from prefix_jax.study.report.contrasts import answer_all, contrasts_markdown, contrasts_table
from prefix_jax.study.report.markdown import markdown, provenance_markdown
from prefix_jax.study.report.plots import plot_metric_by_setting, plot_metric_vs, plot_train_loss
from prefix_jax.study.report.runs import add_provenance, collect, read_launch_log, seed_keys_of
from prefix_jax.study.report.stats import (
    add_intervals,
    choose_metric,
    group_trials,
    numeric_axes,
    select_by_loss,
)
from prefix_jax.study.report.tables import (
    selection_table,
    summary_table,
    trials_table,
    write_csv,
)


def write_report(
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
