"""One read of the agent's state that both GetStats and /metrics are built from.

AgentApp.snapshot() gathers it (counters, histograms, the cached psutil sample, pool and cache
sizes); server/agent.py turns it into a GetStatsResponse with `stats_proto`, metrics/collectors.py
into Prometheus families. Neither needs the app itself, so there is no app <-> collectors <->
server import cycle, and the two views cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.runtime.cache import CacheCounters
from perfpilot_agent.runtime.heartbeat import Sample
from perfpilot_agent.runtime.histogram import Histogram, quantiles_proto
from perfpilot_agent.runtime.monitor import L1Record, OpRecord


@dataclass(frozen=True)
class PoolView:
    """The kernel pool's numbers (zeros when no pool runs)."""

    workers: int = 0
    busy: int = 0
    queue_depth: int = 0
    completed: int = 0
    failed: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Everything GetStats and /metrics report, read at one moment."""

    version: str
    ready: bool
    time_unix_nano: int
    uptime_seconds: float
    generation: int
    sample: Sample | None  # None when psutil could not read /proc
    cpu_count: int
    pool: PoolView
    kernels_in_flight: int
    max_queue: int
    rejected: Mapping[str, int]  # RESOURCE_EXHAUSTED answers by class of work
    auth_failures: int
    rpc_calls: Mapping[tuple[str, str], int]  # (method, code) -> count
    rpc_latency: Mapping[str, Histogram]
    heartbeat: Histogram
    app_total: OpRecord
    ops: Mapping[str, OpRecord]
    refused_op_observations: int  # dropped at the op-name cap
    kernels: Mapping[str, OpRecord]
    cache: CacheCounters
    cache_entries: int
    cache_max_entries: int
    cache_bytes: int
    l1: L1Record
    events_published: Mapping[int, int]
    events_dropped: int
    event_watchers: int


def _op_stats(name: str, rec: OpRecord) -> pb.OpStats:
    return pb.OpStats(op=name, latency=rec.latency.to_proto(), errors=rec.errors, quantiles=quantiles_proto(rec.latency))


def stats_proto(s: Snapshot) -> pb.GetStatsResponse:
    """The GetStats reply (cumulative; merge across pods by adding)."""
    c = s.cache
    out = pb.GetStatsResponse(
        time_unix_nano=s.time_unix_nano, uptime_seconds=s.uptime_seconds, generation=s.generation,
        cpu_count=s.cpu_count,
        ops=[_op_stats(name, rec) for name, rec in sorted(s.ops.items())],
        app_total=_op_stats("", s.app_total),
        heartbeat_latency=s.heartbeat.to_proto(), heartbeat_quantiles=quantiles_proto(s.heartbeat),
        kernels=[pb.KernelStats(kernel=name, latency=rec.latency.to_proto(), errors=rec.errors,
                                cache_hits=rec.cache_hits, quantiles=quantiles_proto(rec.latency))
                 for name, rec in sorted(s.kernels.items())],
        cache=pb.CacheStats(hits=c.hits, misses=c.misses, evictions=c.evictions, expirations=c.expirations,
                            invalidations=c.invalidations, entries=s.cache_entries, max_entries=s.cache_max_entries,
                            dependency_invalidations=c.dependency_invalidations, l1=s.l1.to_proto()),
        pool=pb.PoolStats(workers=s.pool.workers, busy=s.pool.busy, queue_depth=s.pool.queue_depth,
                          max_queue=s.max_queue, completed=s.pool.completed, failed=s.pool.failed,
                          restarts=s.pool.restarts),
        rejected=dict(s.rejected), refused_op_observations=s.refused_op_observations,
    )
    if s.sample is not None:
        out.cpu_percent = s.sample.cpu_percent
        out.rss_bytes = s.sample.rss_bytes
    return out
