"""Prometheus metrics of one app: latency histograms, queue gauges, token and restart counters.

Each app gets its own registry, so several apps (tests) never clash. The service wraps
every engine stream in `track`, so the figures are the same whichever engine runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from serving.engine.base import DeltaStream, EngineStats, GenerationDelta

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
)


class ServingMetrics:
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "xiaophi_time_to_first_token_seconds",
            "Time from request arrival to its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "xiaophi_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "xiaophi_e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "xiaophi_prompt_tokens", "Prompt tokens processed.", registry=self.registry
        )
        self.generation_tokens = Counter(
            "xiaophi_generation_tokens", "Tokens generated.", registry=self.registry
        )
        self.finished = Counter(
            "xiaophi_request_finished",
            "Finished generations by finish reason.",
            ["finish_reason"],
            registry=self.registry,
        )
        running = Gauge(
            "xiaophi_requests_running", "Requests being generated.", registry=self.registry
        )
        waiting = Gauge(
            "xiaophi_requests_waiting", "Requests queued for a slot.", registry=self.registry
        )
        running.set_function(lambda: s.running if (s := stats()) else 0)
        waiting.set_function(lambda: s.waiting if (s := stats()) else 0)
        self.registry.register(_EngineRestarts(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self, stream: DeltaStream, prompt_tokens: int, arrived: float) -> TrackedStream:
        """Wrap `stream` so its tokens are timed and counted."""
        self.prompt_tokens.inc(prompt_tokens)
        return TrackedStream(self, stream, arrived)


class _EngineRestarts:
    """`xiaophi_engine_restarts_total`, read from the engine when scraped: the engine counts
    its process's restarts itself (they show in /health too)."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self):
        stats = self._stats()
        yield CounterMetricFamily(
            "xiaophi_engine_restarts",
            "Times the engine process died and a new one was started.",
            value=stats.restarts if stats else 0,
        )


class TrackedStream:
    """Passes deltas through, timing tokens; a stream closed before its end counts as cancelled."""

    def __init__(self, metrics: ServingMetrics, stream: DeltaStream, arrived: float) -> None:
        self._metrics = metrics
        self._stream = stream
        self._arrived = arrived
        self._last_token_at: float | None = None
        self._tokens = 0  # generated so far, as the deltas count them
        self._reason: str | None = None

    def __aiter__(self) -> TrackedStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._reason is not None:
            raise StopAsyncIteration
        delta = await self._stream.__anext__()
        m = self._metrics
        # counted from `completion_tokens`: engines that get text from an upstream server
        # know the count, not the ids
        new = delta.completion_tokens - self._tokens
        if new > 0:
            self._tokens = delta.completion_tokens
            now = time.perf_counter()
            if self._last_token_at is None:
                m.ttft.observe(now - self._arrived)
            else:
                m.itl.observe((now - self._last_token_at) / new)
            self._last_token_at = now
            m.generation_tokens.inc(new)
        if delta.finish_reason is not None:
            self._end(delta.finish_reason)
        return delta

    def _end(self, reason: str) -> None:
        self._reason = reason
        self._metrics.finished.labels(finish_reason=reason).inc()
        if reason in ("stop", "length"):
            self._metrics.e2e.observe(time.perf_counter() - self._arrived)

    async def aclose(self) -> None:
        if self._reason is None:
            self._end("cancelled")
        await self._stream.aclose()
