"""From the sidecars' cumulative GetStats snapshots to the profile's metrics.

Sidecars report cumulative counters; alerts and autoscaling need what happened *recently*, so
each pass diffs a pod's snapshot against its previous one (a restarted sidecar, seen as a
smaller uptime, starts from zero). A pod seen for the first time (every pod, after an operator
start or a leader change) only sets the baseline: its history was already acted on. Deltas are merged across pods by adding histogram buckets,
then read as quantiles — exact merging, unlike averaging per-pod percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from perfpilot_operator.logic.histograms import Histogram, merge, quantile

METRICS = ("heartbeat_p99_seconds", "app_latency_p95_seconds", "app_latency_p99_seconds",
           "app_error_ratio", "queue_depth", "pool_utilization", "cpu_utilization",
           "memory_utilization", "cache_hit_ratio", "kernel_p99_seconds")
STATS_ONLY = ("cache_l1_hit_ratio",)
"""Per-profile figures exported (perfpilot_operator_profile_metric) but not usable in alerts or
autoscaling: cache_l1_hit_ratio = the clients' L1 hits / their L1 reads. cache_hit_ratio stays the
sidecar cache's own (reads that reached it: L1 misses and clients without L1)."""


@dataclass(frozen=True)
class Snapshot:
    """One pod's stats; counters cumulative (from the sidecar) or deltas (after diff)."""

    uptime: float
    heartbeat: Histogram | None = None
    app: Histogram | None = None
    app_errors: int = 0
    kernels: Histogram | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    l1_hits: int = 0
    l1_misses: int = 0
    # Gauges: instantaneous, never diffed.
    queue_depth: float = 0.0
    busy_workers: float = 0.0
    workers: float = 0.0
    cpu_percent: float = 0.0
    cpu_count: int = 1
    rss_bytes: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _hist(msg: Any) -> Histogram | None:
    if msg is None or not len(msg.bounds):
        return None
    return Histogram(tuple(msg.bounds), tuple(msg.counts), msg.sum)


def from_proto(resp: Any) -> Snapshot:
    """A perfpilot.v1.GetStatsResponse as a Snapshot."""
    kernels = merge(h for h in (_hist(k.latency) for k in resp.kernels) if h is not None)
    return Snapshot(
        uptime=resp.uptime_seconds,
        heartbeat=_hist(resp.heartbeat_latency),
        app=_hist(resp.app_total.latency) if resp.HasField("app_total") else None,
        app_errors=resp.app_total.errors if resp.HasField("app_total") else 0,
        kernels=kernels,
        cache_hits=resp.cache.hits,
        cache_misses=resp.cache.misses,
        l1_hits=resp.cache.l1.hits,
        l1_misses=resp.cache.l1.misses,
        queue_depth=resp.pool.queue_depth,
        busy_workers=resp.pool.busy,
        workers=resp.pool.workers,
        cpu_percent=resp.cpu_percent,
        cpu_count=max(1, resp.cpu_count),
        rss_bytes=resp.rss_bytes,
    )


def _hdiff(cur: Histogram | None, prev: Histogram | None) -> Histogram | None:
    if cur is None or prev is None or cur.bounds != prev.bounds:
        return cur
    return Histogram(cur.bounds, tuple(max(0, a - b) for a, b in zip(cur.counts, prev.counts)),
                     max(0.0, cur.total - prev.total))


def delta(prev: Snapshot | None, cur: Snapshot) -> Snapshot:
    """What happened between two snapshots of one pod (all of `cur` after a restart)."""
    if prev is None or cur.uptime < prev.uptime:
        return cur
    return replace(
        cur,
        heartbeat=_hdiff(cur.heartbeat, prev.heartbeat),
        app=_hdiff(cur.app, prev.app),
        app_errors=max(0, cur.app_errors - prev.app_errors),
        kernels=_hdiff(cur.kernels, prev.kernels),
        cache_hits=max(0, cur.cache_hits - prev.cache_hits),
        cache_misses=max(0, cur.cache_misses - prev.cache_misses),
        l1_hits=max(0, cur.l1_hits - prev.l1_hits),
        l1_misses=max(0, cur.l1_misses - prev.l1_misses),
    )


def _zero(h: Histogram | None) -> Histogram | None:
    return None if h is None else Histogram(h.bounds, (0,) * len(h.counts), 0.0)


def first_sight(cur: Snapshot, *, since_last_look: float | None) -> Snapshot:
    """The delta of a pod seen for the first time: its gauges, and its counters only when the
    sidecar started after this operator's previous look (`since_last_look` seconds ago; None
    when this is the first look since the operator started), so all it has is new. Otherwise
    its cumulative counters are history (acted on by a previous operator, before a restart)
    and count as nothing: a restart must not scale or alert on old traffic."""
    if since_last_look is not None and cur.uptime <= since_last_look:
        return cur
    return replace(cur, heartbeat=_zero(cur.heartbeat), app=_zero(cur.app), app_errors=0,
                   kernels=_zero(cur.kernels), cache_hits=0, cache_misses=0, l1_hits=0, l1_misses=0)


def _q(h: Histogram | None, q: float) -> float:
    return quantile(h, q) if h is not None and h.count else math.nan


def profile_metrics(deltas: list[Snapshot], *, memory_limit_bytes: float | None = None
                    ) -> dict[str, float]:
    """The metric names usable in alerts and autoscaling; nan where there is no data.
    Gauges are per-replica averages (what HPA's target means)."""
    out = dict.fromkeys(METRICS + STATS_ONLY, math.nan)
    if not deltas:
        return out
    n = len(deltas)
    hb = merge(d.heartbeat for d in deltas if d.heartbeat is not None)
    app = merge(d.app for d in deltas if d.app is not None)
    kern = merge(d.kernels for d in deltas if d.kernels is not None)
    out["heartbeat_p99_seconds"] = _q(hb, 0.99)
    out["app_latency_p95_seconds"] = _q(app, 0.95)
    out["app_latency_p99_seconds"] = _q(app, 0.99)
    calls = app.count if app is not None else 0
    if calls:
        out["app_error_ratio"] = sum(d.app_errors for d in deltas) / calls
    out["kernel_p99_seconds"] = _q(kern, 0.99)
    out["queue_depth"] = sum(d.queue_depth for d in deltas) / n
    workers = sum(d.workers for d in deltas)
    out["pool_utilization"] = (sum(d.busy_workers for d in deltas) / workers) if workers else 0.0
    out["cpu_utilization"] = sum(d.cpu_percent / 100.0 / d.cpu_count for d in deltas) / n
    if memory_limit_bytes:
        out["memory_utilization"] = sum(d.rss_bytes for d in deltas) / n / memory_limit_bytes
    lookups = sum(d.cache_hits + d.cache_misses for d in deltas)
    if lookups:
        out["cache_hit_ratio"] = sum(d.cache_hits for d in deltas) / lookups
    l1_reads = sum(d.l1_hits + d.l1_misses for d in deltas)
    if l1_reads:
        out["cache_l1_hit_ratio"] = sum(d.l1_hits for d in deltas) / l1_reads
    return out
