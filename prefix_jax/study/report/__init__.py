"""A sweep's report: its trials collected into tables, plots and report.md.

    prefix-jax report runs/pl [--metric BLEU] [--split validation] [--out DIR]

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
(`contrasts`).

`--select KEY` (default `optim.learning_rate`) picks, per setting of the other keys, the
value of KEY with the lowest mean validation loss (`eval_loss` of `train_summary.json`) and
writes `selection.csv` and a section of `report.md` with the chosen values as a Python dict
(for `experiments/sweeps/_learning_rates.py`); it is skipped when no setting has two values.

The modules, in the order `write.write_report` uses them: `runs` (reading trial directories
and the launch log), `stats` (settings, means, intervals, selection), `contrasts` (the
questions), `tables` (CSVs), `plots` (PNGs), `markdown` (report.md).
"""

from prefix_jax.study.report.write import write_report

__all__ = ["write_report"]
