"""Answers to a sweep's yes/no questions (`prefix_jax.study.sweep.Contrast`): is setting a
ahead of setting b on BLEU?

For each contrast (and each value of its `within` keys) the report gives:
- the difference of the seed-mean corpus BLEU, a - b;
- the per-seed differences, seeds paired by value (a trial seed fixes the data subsample
  and the initialization, so seed s of a and of b trained on the same examples), and in how
  many of them a is ahead;
- all of it over the seeds evaluated for every compared setting, so that a sweep part way
  through a seed does not set a mean over three seeds against one over two (the row's note
  names the seeds left out);
- a paired percentile bootstrap interval of the difference over the evaluated sources:
  each resample draws one set of sources and scores every seed of both settings on it, so
  the interval is the test-set uncertainty of the difference, and the per-seed differences
  beside it show the training spread;
- the answer: "yes" when the interval lies above 0 and every paired seed has a ahead,
  "no (b ahead)" when both point the other way, otherwise "not resolved".

With `within` keys a last row averages the differences over their values (Li & Liang
report the low-data gain averaged over training-set sizes); its interval comes from the
same resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prefix_jax.metrics.bleu import bleu_of_sums
from prefix_jax.study.bootstrap import (
    LEVEL,
    SEED,
    Run,
    aligned,
    corpus_bleu,
    percentile_interval,
    resample_counts,
    same_sources,
)
from prefix_jax.study.sweep import format_value, seed_of, setting_label

Table = tuple[list[str], list[list[Any]]]
YES, NO, UNRESOLVED = "yes", "no (b ahead)", "not resolved"


def _matches(group: dict, spec: dict) -> bool:
    return all(group["setting"].get(k) == v for k, v in spec.items())


def pair_groups(groups: Sequence[dict], contrast: dict) -> list[tuple[dict, dict, dict]]:
    """[(within values, group a, group b)] of a contrast: each setting matching `a`, with the
    one setting matching `b` that has the same `within` values. Raises ValueError when a
    side matches no setting, or more than one per value of `within`."""
    within = list(contrast.get("within", []))
    sides = {}
    for side in ("a", "b"):
        found: dict[tuple, dict] = {}
        for g in groups:
            if _matches(g, contrast[side]):
                key = tuple(g["setting"].get(k) for k in within)
                if key in found:
                    raise ValueError(
                        f"{side} = {setting_label(contrast[side])} matches more than one setting"
                        + (f" per {', '.join(within)}" if within else "")
                        + "; name more keys in the contrast or pair them with `within`"
                    )
                found[key] = g
        if not found:
            raise ValueError(f"{side} = {setting_label(contrast[side])} matches no setting")
        sides[side] = found
    shared = [k for k in sides["a"] if k in sides["b"]]
    if not shared:
        raise ValueError(f"no value of {', '.join(within)} has both a and b")
    return [(dict(zip(within, k, strict=True)), sides["a"][k], sides["b"][k]) for k in shared]


def _runs(group: dict, seed_keys: Sequence[str]) -> dict[Any, Run]:
    """{seed: (sources, per-source BLEU statistics)} of the group's evaluated trials."""
    return {
        seed_of(t["overrides"], seed_keys): t["bleu_stats"]
        for t in group["trials"]
        if t["status"] == "finished" and t.get("bleu_stats") is not None
    }


def _scores(
    runs: dict[Any, Run], order: list[str], counts: np.ndarray | None
) -> tuple[dict[Any, float], np.ndarray | None]:
    """Per-seed corpus BLEU on all sources, and the seed-mean BLEU of each resample."""
    per_seed, resampled = {}, []
    for seed, run in runs.items():
        stats = aligned(run, order)
        per_seed[seed] = corpus_bleu(stats)
        if counts is not None:
            resampled.append(bleu_of_sums(counts @ stats))
    return per_seed, (np.mean(resampled, axis=0) if resampled else None)


def _answer(low: float | None, high: float | None, seed_diffs: Sequence[float]) -> str:
    if low is None or high is None or not seed_diffs:
        return UNRESOLVED
    if low > 0 and all(d > 0 for d in seed_diffs):
        return YES
    if high < 0 and all(d < 0 for d in seed_diffs):
        return NO
    return UNRESOLVED


def _row(
    contrast: dict,
    within: str,
    diff: float | None,
    seed_diffs: dict,
    draws: np.ndarray | None,
    level: float = LEVEL,
) -> dict:
    low, high = (None, None) if draws is None else percentile_interval(draws, level)
    diffs = list(seed_diffs.values())
    return {
        "question": contrast["question"],
        "within": within,
        "a": setting_label(contrast["a"]),
        "b": setting_label(contrast["b"]),
        "diff": diff,
        "low": low,
        "high": high,
        "seed_diffs": seed_diffs,
        "a_ahead": sum(d > 0 for d in diffs),
        "answer": _answer(low, high, diffs),
        "note": "",
    }


def answer_contrast(
    groups: Sequence[dict],
    contrast: dict,
    seed_keys: Sequence[str],
    samples: int,
    seed: int = SEED,
    level: float = LEVEL,
) -> list[dict]:
    """Rows answering one contrast (see the module docstring); a contrast that cannot be
    answered gives one row whose `note` says why."""
    try:
        pairs = pair_groups(groups, contrast)
    except ValueError as e:
        return [_unanswered(contrast, str(e))]
    runs = [(w, _runs(ga, seed_keys), _runs(gb, seed_keys)) for w, ga, gb in pairs]
    runs = [(w, ra, rb) for w, ra, rb in runs if ra and rb]
    if not runs:
        return [_unanswered(contrast, "no evaluated trials with predictions on both sides")]
    seeds = set.intersection(*(set(r) for _, ra, rb in runs for r in (ra, rb)))
    if not seeds:
        return [_unanswered(contrast, "no seed was evaluated for every compared setting")]
    left_out = {s for _, ra, rb in runs for r in (ra, rb) for s in r} - seeds
    runs = [(w, _only(ra, seeds), _only(rb, seeds)) for w, ra, rb in runs]
    order = same_sources([run for _, ra, rb in runs for run in (*ra.values(), *rb.values())])
    if order is None:
        return [_unanswered(contrast, "the settings were scored on different sources")]
    counts = None
    if samples:
        counts = resample_counts(len(order), samples, np.random.default_rng(seed))
    rows, all_draws, all_seed_diffs = [], [], []
    for within, ra, rb in runs:
        seeds_a, draws_a = _scores(ra, order, counts)
        seeds_b, draws_b = _scores(rb, order, counts)
        diff = float(np.mean(list(seeds_a.values())) - np.mean(list(seeds_b.values())))
        seed_diffs = {s: seeds_a[s] - seeds_b[s] for s in seeds_a}
        draws = None if counts is None else draws_a - draws_b
        rows.append(_row(contrast, setting_label(within), diff, seed_diffs, draws, level))
        all_draws.append(draws)
        all_seed_diffs.append(seed_diffs)
    if len(rows) > 1:
        seed_diffs = {s: float(np.mean([d[s] for d in all_seed_diffs])) for s in all_seed_diffs[0]}
        draws = None if counts is None else np.mean(all_draws, axis=0)
        diff = float(np.mean([r["diff"] for r in rows]))
        label = f"mean over {', '.join(contrast['within'])}"
        rows.append(_row(contrast, label, diff, seed_diffs, draws, level))
    if left_out:
        note = "seeds not evaluated for every compared setting left out: "
        note += ", ".join(sorted(format_value(s) for s in left_out))
        for row in rows:
            row["note"] = note
    return rows


def _only(runs: dict[Any, Run], seeds: set) -> dict[Any, Run]:
    return {s: run for s, run in runs.items() if s in seeds}


def _unanswered(contrast: dict, why: str) -> dict:
    return {**_row(contrast, "", None, {}, None), "note": why}


def answer_all(
    groups: Sequence[dict], contrasts: Sequence[dict], seed_keys: Sequence[str], samples: int
) -> list[dict]:
    """Rows of every contrast, in the sweep's order; each contrast draws its own resamples
    from the same RNG seed, so adding a contrast leaves the others' intervals unchanged."""
    return [row for c in contrasts for row in answer_contrast(groups, c, seed_keys, samples)]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _seeds_cell(row: dict) -> str:
    diffs = row["seed_diffs"]
    if not diffs:
        return "-"
    listed = ", ".join(_fmt(d) for d in diffs.values())
    return f"{row['a_ahead']}/{len(diffs)} ({listed})"


def contrasts_table(rows: Sequence[dict]) -> Table:
    """Header and rows of contrasts.csv."""
    header = ["question", "within", "a", "b", "bleu_diff", "ci_low", "ci_high"]
    header += ["seed_diffs", "seeds_a_ahead", "answer", "note"]
    out = [
        [
            r["question"],
            r["within"],
            r["a"],
            r["b"],
            r["diff"],
            r["low"],
            r["high"],
            " ".join(f"{format_value(s)}:{d:.4f}" for s, d in r["seed_diffs"].items()),
            r["a_ahead"],
            r["answer"],
            r["note"],
        ]
        for r in rows
    ]
    return header, out


def contrasts_markdown(rows: Sequence[dict], samples: int) -> list[str]:
    """report.md section: one table row per compared pair, with the answer."""
    lines = ["## Questions: is a ahead of b?", ""]
    lines += ["| question | within | a | b | BLEU a - b | 95% CI | seeds a ahead | answer |"]
    lines += ["|---|---|---|---|---:|---|---|---|"]
    for r in rows:
        ci = "-" if r["low"] is None else f"[{_fmt(r['low'])}, {_fmt(r['high'])}]"
        answer = r["answer"] + (f": {r['note']}" if r["note"] else "")
        cells = [r["question"], r["within"] or "-", f"`{r['a']}`", f"`{r['b']}`"]
        cells += [_fmt(r["diff"]), ci, _seeds_cell(r), answer]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "BLEU a - b: difference of the seed-mean corpus BLEU. 95% CI: paired percentile "
        f"bootstrap over the evaluated sources ({samples} resamples), one draw of sources "
        "scoring every seed of both settings (test-set uncertainty). Seeds a ahead: paired "
        "seeds (same data subsample and init) where a scores higher, with each difference. "
        f"`{YES}` needs the interval above 0 and every seed ahead; `{NO}` the reverse.",
    ]
    return lines
