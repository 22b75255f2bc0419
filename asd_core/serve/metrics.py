"""What ``/metrics`` shows, in Prometheus' text format (through ``prometheus_client``).

One registry per server (tests start several in one process). Counters and histograms are
updated as requests finish; the cache memory and the live costs are read when scraped.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from asd_core.policy.live_costs import CostTracker
from asd_core.serve.kv import CacheManager

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)  # seconds


def _memory(cache: CacheManager, stage: int, field: str) -> float:
    return float(getattr(cache.memory(stage), field))


def _cost(costs: CostTracker, stage: int, what: str) -> float:
    if what == "cost":
        return float(costs.current_costs()[stage])
    return float((costs.factors if what == "factor" else costs.seconds)[stage])


class ServerMetrics:
    """The server's counters, histograms and gauges, labelled by stage name."""

    def __init__(
        self,
        stage_names: Sequence[str],
        cache: CacheManager | None = None,
        costs: CostTracker | None = None,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_names = list(stage_names)
        self.requests = Counter(
            "asd_requests", "Requests answered, by endpoint and status", ["endpoint", "status"],
            registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "asd_errors", "Requests refused or failed, by HTTP status and field", ["code", "param"],
            registry=r,
        )  # fmt: skip
        depths = [k + 0.5 for k in range(len(stage_names))]  # one bucket per stage index
        self.depth = Histogram(
            "asd_depth", "Stage whose output was returned (0 = cheapest)", buckets=depths,
            registry=r,
        )  # fmt: skip
        self.stage_latency = Histogram(
            "asd_stage_latency_seconds", "Seconds a stage spent on one request (its batch share)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "asd_request_latency_seconds", "Seconds from arrival to answer", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.accepted = Counter(
            "asd_accepted_tokens", "Draft tokens a deeper stage accepted", ["stage"], registry=r
        )
        self.drafted = Counter(
            "asd_drafted_tokens", "Draft tokens offered to a deeper stage", ["stage"], registry=r
        )
        self.generated = Counter(
            "asd_completion_tokens", "Tokens of the answers returned", registry=r
        )
        self.batch_size = Histogram(
            "asd_batch_size", "Requests per stage batch", ["stage"],
            buckets=(1, 2, 4, 8, 16, 32), registry=r,
        )  # fmt: skip
        self.resolves = Counter(
            "asd_policy_resolves", "Times the tables were re-solved", registry=r
        )
        if cache is not None:
            self._memory_gauges(cache)
        if costs is not None:
            self._cost_gauges(costs)

    def _memory_gauges(self, cache: CacheManager) -> None:
        held = Gauge(
            "asd_kv_cache_bytes", "Key/value memory held", ["stage"], registry=self.registry
        )
        tokens = Gauge("asd_kv_cache_tokens", "Tokens held", ["stage"], registry=self.registry)
        cap = Gauge(
            "asd_kv_cache_capacity_tokens", "Tokens the slots hold at most", ["stage"],
            registry=self.registry,
        )  # fmt: skip
        for k, name in enumerate(self.stage_names):
            held.labels(name).set_function(partial(_memory, cache, k, "held_bytes"))
            tokens.labels(name).set_function(partial(_memory, cache, k, "held_tokens"))
            cap.labels(name).set_function(partial(_memory, cache, k, "capacity_tokens"))

    def _cost_gauges(self, costs: CostTracker) -> None:
        r = self.registry
        cost = Gauge(
            "asd_stage_cost", "Current cost of a stage from scratch (deepest stage alone = 1)",
            ["stage"], registry=r,
        )  # fmt: skip
        factor = Gauge(
            "asd_stage_cost_factor", "Observed / fitted cost, moving average", ["stage"], registry=r
        )
        seconds = Gauge(
            "asd_stage_seconds", "Observed seconds per stage run, moving average", ["stage"],
            registry=r,
        )  # fmt: skip
        for k, name in enumerate(self.stage_names):
            cost.labels(name).set_function(partial(_cost, costs, k, "cost"))
            factor.labels(name).set_function(partial(_cost, costs, k, "factor"))
            seconds.labels(name).set_function(partial(_cost, costs, k, "seconds"))

    def text(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)
