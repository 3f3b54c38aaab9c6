"""The timing rules every benchmark uses: median (a workload) or best (a ceiling) of calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def call_seconds(call: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls; `call` must block until its work is done."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls: what a workload typically takes."""
    return statistics.median(call_seconds(call, repeats))


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` calls: for a machine's ceiling (a matmul rate), not a workload."""
    return min(call_seconds(call, repeats))
