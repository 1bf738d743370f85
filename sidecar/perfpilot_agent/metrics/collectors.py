"""One custom Collector that turns the agent's snapshot() into Prometheus families at scrape time.

Hot paths only bump plain ints and bucket counts; the Prometheus objects are built per scrape.
psutil samples come from the cached ProcessSampler (no extra /proc reads within its interval).
Scrapes run on prometheus-client's HTTP thread: reads of ints/lists are atomic under the GIL, and
a scrape that races an update sees one side of it, which is fine for monitoring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.metrics.definitions import METRICS, full_name
from perfpilot_agent.runtime.histogram import BOUNDS, PROMETHEUS_BOUND_INDEXES, Histogram
from perfpilot_agent.runtime.snapshot import Snapshot

QUANTILES = (("0.5", 0.5), ("0.95", 0.95), ("0.99", 0.99))


def _family(name: str) -> Metric:
    kind, labels, help_ = METRICS[name]
    n = full_name(name)
    if kind == "counter":
        return CounterMetricFamily(n, help_, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(n, help_, labels=labels)
    return GaugeMetricFamily(n, help_, labels=labels)


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    """Cumulative buckets at every 4th bound (exact, since cumulative counts need no interpolation)."""
    out: list[tuple[str, float]] = []
    cumulative = 0
    counts = list(h.counts)
    prev = -1
    for i in PROMETHEUS_BOUND_INDEXES:
        cumulative += sum(counts[prev + 1:i + 1])
        prev = i
        out.append((repr(BOUNDS[i]), float(cumulative)))
    out.append(("+Inf", float(sum(counts))))
    return out


class AgentCollector(Collector):
    """Exposes every metric in METRICS from the agent's snapshot() (read once per scrape)."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, registry: CollectorRegistry | None = None) -> None:
        self.snapshot = snapshot
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """Empty description: the registry then calls collect() lazily (no scrape at register)."""
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        f = {name: _family(name) for name in METRICS}

        def g(name: str, value: float, labels: list[str] | None = None) -> None:
            f[name].add_metric(labels or [], value)  # type: ignore[attr-defined]

        def hist(name: str, h: Histogram, labels: list[str] | None = None) -> None:
            f[name].add_metric(labels or [], _buckets(h), h.sum)  # type: ignore[attr-defined]

        g("info", 1.0, [s.version])
        g("ready", 1.0 if s.ready else 0.0)
        g("uptime_seconds", s.uptime_seconds)
        g("config_generation", float(s.generation))
        if s.sample is not None:
            g("process_cpu_percent", s.sample.agent.cpu_percent, ["agent"])
            g("process_cpu_percent", sum(w.cpu_percent for w in s.sample.workers), ["workers"])
            g("process_resident_memory_bytes", float(s.sample.agent.rss_bytes), ["agent"])
            g("process_resident_memory_bytes", float(sum(w.rss_bytes for w in s.sample.workers)), ["workers"])
        g("cpu_count", float(s.cpu_count))
        ps = s.pool
        g("workers", float(ps.workers))
        g("busy_workers", float(ps.busy))
        g("pool_utilization_ratio", ps.busy / ps.workers if ps.workers else 0.0)
        g("queue_depth", float(ps.queue_depth))
        g("kernels_in_flight", float(s.kernels_in_flight))
        g("max_queue", float(s.max_queue))
        g("worker_restarts_total", float(ps.restarts))
        for cls, n in sorted(s.rejected.items()):
            g("rejected_total", float(n), [cls])
        g("auth_failures_total", float(s.auth_failures))
        for (method, code), n in sorted(s.rpc_calls.items()):
            g("rpc_total", float(n), [method, code])
        for method, h in sorted(s.rpc_latency.items()):
            hist("rpc_duration_seconds", h, [method])
        g("app_refused_observations_total", float(s.refused_op_observations))
        hist("heartbeat_duration_seconds", s.heartbeat)
        for label, q in QUANTILES:
            g("heartbeat_quantile_seconds", s.heartbeat.quantile(q), [label])
            g("app_total_latency_quantile_seconds", s.app_total.latency.quantile(q), [label])
        for op, rec in sorted(s.ops.items()):
            hist("app_latency_seconds", rec.latency, [op])
            g("app_errors_total", float(rec.errors), [op])
            for label, q in QUANTILES:
                g("app_latency_quantile_seconds", rec.latency.quantile(q), [op, label])
        for kernel, rec in sorted(s.kernels.items()):
            hist("kernel_duration_seconds", rec.latency, [kernel])
            g("kernel_errors_total", float(rec.errors), [kernel])
            g("kernel_cache_hits_total", float(rec.cache_hits), [kernel])
            for label, q in QUANTILES:
                g("kernel_quantile_seconds", rec.latency.quantile(q), [kernel, label])
        c = s.cache
        g("cache_hits_total", float(c.hits))
        g("cache_misses_total", float(c.misses))
        g("cache_evictions_total", float(c.evictions))
        g("cache_expirations_total", float(c.expirations))
        g("cache_invalidations_total", float(c.invalidations))
        g("cache_entries", float(s.cache_entries))
        g("cache_max_entries", float(s.cache_max_entries))
        g("cache_bytes", float(s.cache_bytes))
        reads = c.hits + c.misses
        g("cache_hit_ratio", c.hits / reads if reads else 0.0)
        g("cache_dependency_invalidations_total", float(c.dependency_invalidations))
        l1 = s.l1
        g("cache_l1_hits_total", float(l1.hits))
        g("cache_l1_misses_total", float(l1.misses))
        g("cache_l1_evictions_total", float(l1.evictions))
        g("cache_l1_invalidations_total", float(l1.invalidations))
        g("cache_l1_events_total", float(l1.events))
        g("cache_l1_resyncs_total", float(l1.resyncs))
        l1_reads = l1.hits + l1.misses
        g("cache_l1_hit_ratio", l1.hits / l1_reads if l1_reads else 0.0)
        hist("cache_l1_staleness_seconds", l1.staleness, [])
        for type_, n in sorted(s.events_published.items()):
            g("events_published_total", float(n), [_event_label(type_)])
        g("events_dropped_total", float(s.events_dropped))
        g("event_watchers", float(s.event_watchers))
        for family in f.values():
            if family.samples:  # labelled families with no series yet are left out
                yield family


def _event_label(type_: int) -> str:
    try:
        return pb.EventType.Name(type_).removeprefix("EVENT_TYPE_").lower()  # type: ignore[arg-type]
    except ValueError:
        return "unknown"

