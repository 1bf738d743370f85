"""Metric names and the /metrics HTTP endpoint.

Names follow perfpilot_<subsystem>_<name>_<unit>; labels are bounded (method, code, op — capped by
--max-ops —, kernel, role, class, type, quantile). docs/metrics.md lists every one of them; a test
checks that the list here and the document agree.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

PREFIX = "perfpilot_sidecar"

# name (without prefix) -> (type, labels, help)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "info": ("gauge", ("version",), "Always 1; carries the agent version."),
    "ready": ("gauge", (), "1 when warm kernels are compiled and the agent is SERVING."),
    "uptime_seconds": ("gauge", (), "Seconds since the agent started."),
    "config_generation": ("gauge", (), "PerfProfile generation of the applied live config (0 = startup config)."),
    "process_cpu_percent": ("gauge", ("role",), "CPU percent since the previous sample (100 = one core); role is agent or workers."),
    "process_resident_memory_bytes": ("gauge", ("role",), "Resident memory; role is agent or workers."),
    "cpu_count": ("gauge", (), "Logical CPUs visible to the agent."),
    "workers": ("gauge", (), "Kernel worker processes."),
    "busy_workers": ("gauge", (), "Kernel workers running a call."),
    "pool_utilization_ratio": ("gauge", (), "busy_workers / workers (0 without a pool)."),
    "queue_depth": ("gauge", (), "Kernel calls waiting for a worker."),
    "kernels_in_flight": ("gauge", (), "Kernel calls admitted (running + queued)."),
    "max_queue": ("gauge", (), "Kernel admission limit (pools.maxQueue)."),
    "worker_restarts_total": ("counter", (), "Kernel workers restarted after dying."),
    "rejected_total": ("counter", ("class",), "Calls answered RESOURCE_EXHAUSTED by a full queue, by class of work."),
    "auth_failures_total": ("counter", (), "Calls refused by who may call what: control calls on the health port or from a non-operator certificate, Configure over the socket."),
    "rpc_total": ("counter", ("method", "code"), "Finished gRPC calls by method and status code."),
    "rpc_duration_seconds": ("histogram", ("method",), "Time spent in the handler, by method."),
    "heartbeat_duration_seconds": ("histogram", (), "Time spent answering Heartbeat."),
    "heartbeat_quantile_seconds": ("gauge", ("quantile",), "p50/p95/p99 of heartbeat_duration_seconds (from buckets, <= 18.9% error)."),
    "app_latency_seconds": ("histogram", ("op",), "Latency the app recorded with measure(), by op."),
    "app_refused_observations_total": ("counter", (), "Observations not recorded because their op name was refused at the --max-ops limit (each name is logged once)."),
    "app_latency_quantile_seconds": ("gauge", ("op", "quantile"), "p50/p95/p99 of app latency by op (from buckets, <= 18.9% error)."),
    "app_total_latency_quantile_seconds": ("gauge", ("quantile",), "p50/p95/p99 of app latency over all ops."),
    "app_errors_total": ("counter", ("op",), "Observations the app marked as errors, by op."),
    "kernel_duration_seconds": ("histogram", ("kernel",), "RunKernel latency (admission to result), by kernel."),
    "kernel_quantile_seconds": ("gauge", ("kernel", "quantile"), "p50/p95/p99 of kernel latency."),
    "kernel_errors_total": ("counter", ("kernel",), "RunKernel calls that failed, by kernel."),
    "kernel_cache_hits_total": ("counter", ("kernel",), "RunKernel calls answered from the cache, by kernel."),
    "cache_hits_total": ("counter", (), "Cache reads that found a live entry."),
    "cache_misses_total": ("counter", (), "Cache reads that found nothing or an expired entry."),
    "cache_evictions_total": ("counter", (), "Entries evicted because the cache was full (LRU)."),
    "cache_expirations_total": ("counter", (), "Entries dropped because their TTL passed."),
    "cache_invalidations_total": ("counter", (), "Entries removed by CacheInvalidate."),
    "cache_entries": ("gauge", (), "Entries in the cache."),
    "cache_max_entries": ("gauge", (), "Cache capacity (cache.maxEntries)."),
    "cache_bytes": ("gauge", (), "Approximate bytes held by the cache."),
    "cache_hit_ratio": ("gauge", (), "hits / (hits + misses) since start (0 before any read): reads that reached "
                        "the sidecar; hits in the clients' L1 are not in it (cache_l1_hit_ratio)."),
    "cache_dependency_invalidations_total": ("counter", (), "Entries removed because something they depend on "
                                             "(key, prefix, tag) was written or invalidated."),
    "cache_l1_hits_total": ("counter", (), "Reads answered by the clients' in-process L1 (reported by the clients)."),
    "cache_l1_misses_total": ("counter", (), "Reads the clients' L1 could not answer (then read from this sidecar)."),
    "cache_l1_evictions_total": ("counter", (), "Entries evicted from the clients' L1 because it was full."),
    "cache_l1_invalidations_total": ("counter", (), "Entries dropped from the clients' L1 by cache events."),
    "cache_l1_events_total": ("counter", (), "Cache events applied by the clients' L1."),
    "cache_l1_resyncs_total": ("counter", (), "Times a client's L1 stopped serving and cleared itself because its "
                               "event stream was down or lost events."),
    "cache_l1_hit_ratio": ("gauge", (), "L1 hits / (L1 hits + L1 misses) since start, over this sidecar's clients."),
    "cache_l1_staleness_seconds": ("histogram", (), "Delay from a cache change in this sidecar to a client's L1 "
                                   "applying it: how long an L1 may have served the old value."),
    "cache_shared_up": ("gauge", (), "1 while the shared tier (cache.shared) answers and its invalidation channel is subscribed, 0 during an outage (the local tiers serve alone); absent when cache.shared is unset."),
    "cache_shared_hits_total": ("counter", (), "Local cache misses answered by the shared tier."),
    "cache_shared_misses_total": ("counter", (), "Local cache misses the shared tier did not have either."),
    "cache_shared_skipped_total": ("counter", (), "Local cache misses not looked up in the shared tier because it was down."),
    "cache_shared_errors_total": ("counter", (), "Failed or timed-out shared tier operations (each a miss or a deferred write, never an error to the app)."),
    "cache_shared_writes_total": ("counter", (), "Values written through to the shared tier."),
    "cache_shared_writes_dropped_total": ("counter", (), "Writes not sent (queue full or tier down); their keys are invalidated everywhere on recovery."),
    "cache_shared_invalidations_sent_total": ("counter", (), "Overwrites and invalidations this replica published to the others."),
    "cache_shared_invalidations_received_total": ("counter", (), "Invalidations from other replicas applied here."),
    "cache_shared_resyncs_total": ("counter", (), "Times the local cache was dropped after a reconnect (it may have missed invalidations)."),
    "cache_shared_pending": ("gauge", (), "Writes and invalidations waiting to be sent to the shared tier."),
    "events_published_total": ("counter", ("type",), "Events published, by type."),
    "events_dropped_total": ("counter", (), "Events dropped for slow WatchEvents subscribers."),
    "event_watchers": ("gauge", (), "Open WatchEvents streams."),
}


def full_name(name: str) -> str:
    """perfpilot_sidecar_<name>."""
    return f"{PREFIX}_{name}"


class MetricsServer:
    """prometheus-client's HTTP server on its own port, in a daemon thread."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int) -> None:
        self.httpd: WSGIServer
        self.thread: threading.Thread
        self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        """The bound port (useful with --metrics-port 0)."""
        return int(self.httpd.server_port)

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
