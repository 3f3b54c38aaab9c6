"""The HTTP server's Prometheus metrics: per-request latencies and counts observed by the
API, and the engine's occupancy (slots, running, waiting) read from `Engine.stats()` at
scrape time, so a gauge can never drift from the engine's own bookkeeping.

Each app has its own `CollectorRegistry`, so several apps (tests, benchmarks) can live in
one process without clashing over metric names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Latency buckets (seconds): CPU decode steps are tens of ms, first tokens up to seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _EngineCollector(Collector):
    """Gauges read from the engine when Prometheus scrapes."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.engine.stats()
        for name, about, value in (
            ("slots_in_use", "decode slots holding a request", stats.slots_in_use),
            ("slots", "decode slots in all", stats.slots),
            ("requests_running", "requests in a decode slot", stats.running),
            ("requests_waiting", "requests queued for a slot", stats.waiting),
            ("compilations_warmup", "programs compiled at start-up", stats.compilations),
            (
                "compilations_after_warmup",
                "compilations after start-up (should stay 0)",
                stats.compilations_after_warmup,
            ),
        ):
            yield GaugeMetricFamily(f"prefix_jax_{name}", about, value=value)


@dataclasses.dataclass
class RequestTimes:
    """One request's clock readings (time.perf_counter seconds), filled as events arrive."""

    arrival: float
    first_token: float | None = None
    last_token: float | None = None
    completion_tokens: int = 0

    def tokens(self, when: float, count: int) -> None:
        if count:
            if self.first_token is None:
                self.first_token = when
            self.last_token = when
            self.completion_tokens += count


class Metrics:
    """The app's metrics; `finished` records one request when it ends (any way)."""

    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        r = self.registry
        self.ttft = Histogram(
            "prefix_jax_time_to_first_token_seconds",
            "arrival to the first generated token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "prefix_jax_time_per_output_token_seconds",
            "time between output tokens after the first, per request",
            ["model"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "prefix_jax_request_latency_seconds",
            "arrival to the last event of a request",
            ["model"],
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "prefix_jax_requests",
            "requests the engine ended, by model (base or prefix) and finish reason",
            ["model", "finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "prefix_jax_prompt_tokens", "prompt tokens, by model", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "prefix_jax_generation_tokens", "generated tokens, by model", ["model"], registry=r
        )
        self.errors = Counter(
            "prefix_jax_http_errors",
            "error responses, by HTTP status",
            ["status"],
            registry=r,
        )

    def finished(
        self, model: str, times: RequestTimes, end: float, prompt_tokens: int, reason: str
    ) -> None:
        self.requests.labels(model, reason).inc()
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(times.completion_tokens)
        self.e2e.labels(model).observe(end - times.arrival)
        if times.first_token is not None:
            self.ttft.labels(model).observe(times.first_token - times.arrival)
            if times.completion_tokens > 1:
                span = times.last_token - times.first_token
                self.tpot.labels(model).observe(span / (times.completion_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
