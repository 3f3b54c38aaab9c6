"""Percentile bootstrap of corpus BLEU over the evaluated sources (test-set uncertainty).

Corpus BLEU is not a mean of per-source scores, so each resample re-sums the per-source
n-gram statistics (`prefix_jax.metrics.bleu_segment_stats`) with how often each source was
drawn and scores the sums (`bleu_of_sums`, vectorized over resamples). Seeds evaluated on
the same sources share each draw (paired), so an interval is of the seed-averaged score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefix_jax.metrics.bleu import bleu_of_sums

SAMPLES = 1000
SEED = 0
LEVEL = 0.95

Run = tuple[Sequence[str], np.ndarray]  # sources, their bleu_segment_stats rows


def resample_counts(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """[samples, n] how often each of n items is drawn in each resample of n with replacement."""
    draws = rng.integers(0, n, size=(samples, n)) + n * np.arange(samples)[:, None]
    return np.bincount(draws.ravel(), minlength=samples * n).reshape(samples, n)


def same_sources(runs: Sequence[Run]) -> list[str] | None:
    """The sources every run was scored on, in the first run's order; None if they differ."""
    order, first = list(runs[0][0]), sorted(runs[0][0])
    if all(len(sources) == len(first) and sorted(sources) == first for sources, _ in runs):
        return order
    return None


def aligned(run: Run, order: Sequence[str]) -> np.ndarray:
    """The run's statistics rows in `order` of sources."""
    sources, stats = run
    index = {s: i for i, s in enumerate(sources)}
    return stats[[index[s] for s in order]]


def corpus_bleu(stats: np.ndarray) -> float:
    """Corpus BLEU of aligned statistics rows."""
    return float(bleu_of_sums(stats.sum(axis=0))[0])


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_bleu(
    runs: Sequence[Run], samples: int = SAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float, float]:
    """(point, low, high): mean corpus BLEU over `runs` (one per seed) and its percentile
    bootstrap interval over sources.

    Runs over the same sources are resampled together (one draw of sources per resample,
    applied to every run, rows matched by source); runs over different sources each get
    their own draws. Deterministic for a given `seed`.
    """
    if not runs:
        raise ValueError("bootstrap_bleu needs at least one run")
    rng = np.random.default_rng(seed)
    order = same_sources(runs)
    shared = resample_counts(len(order), samples, rng) if order is not None else None
    point, resampled = [], []
    for run in runs:
        if order is not None:
            stats, counts = aligned(run, order), shared
        else:
            stats = run[1]
            counts = resample_counts(len(stats), samples, rng)
        point.append(corpus_bleu(stats))
        resampled.append(bleu_of_sums(counts @ stats))
    return float(np.mean(point)), *percentile_interval(np.mean(resampled, axis=0), level)
