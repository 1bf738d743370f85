"""`perfpilot / Sidecars`: what each sidecar agent exports on its own /metrics (docs/metrics.md).

Per pod: heartbeat, the app's ops, gRPC, kernels, pool and queue, cache, CPU and memory, events.
`namespace` and `pod` are the scrape's target labels (a PodMonitor adds them; see
docs/dashboards.md). Latencies are `histogram_quantile` over the window, not the agent's
`*_quantile_seconds` gauges, which cover everything since the agent started.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.common import (Layout, Query, datasource_variable, label_variable,
                               new_dashboard, stat, timeseries)

UID = "perfpilot-sidecars"
TITLE = "perfpilot / Sidecars"
SEL = 'namespace=~"$namespace", pod=~"$pod"'
WINDOW = "$__rate_interval"
BUCKETS = ("The histograms' /metrics buckets double at each bound, so a quantile is "
           "interpolated within a factor of two; the agent's GetStats (what the operator "
           "merges) is finer.")


def _rate(metric: str, by: str, extra: str = "") -> str:
    """Per-second rate of a counter, summed by `by`."""
    inner = f"{SEL}, {extra}" if extra else SEL
    return f"sum by ({by}) (rate({metric}{{{inner}}}[{WINDOW}]))"


def _hit_ratio(prefix: str) -> str:
    """hits / (hits + misses) per pod over the window, of `<prefix>_hits_total` and
    `<prefix>_misses_total` (no value while nothing was read)."""
    hits, misses = _rate(f"{prefix}_hits_total", "pod"), _rate(f"{prefix}_misses_total", "pod")
    return f"{hits} / ({hits} + {misses} > 0)"


def _quantile(q: float, histogram: str, by: str) -> str:
    """The q-quantile of a histogram over the window, per `by` (le added)."""
    return (f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({histogram}_bucket{{{SEL}}}[{WINDOW}])))")


def _quantiles(histogram: str, by: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[Query]:
    """One query per quantile, legend "{{by}} pNN"."""
    return [Query(_quantile(q, histogram, by), f"{{{{{by}}}}} p{round(q * 100)}") for q in qs]


def build() -> Dashboard:
    """The dashboard builder (common.encode turns it into the committed JSON)."""
    d = new_dashboard(
        UID, TITLE,
        "The perfpilot sidecar agents, per pod: heartbeat, app ops, gRPC, kernels, pool, "
        "cache, CPU and memory (each sidecar's own /metrics).")
    d = (d.with_variable(datasource_variable())
         .with_variable(label_variable(
             "namespace", "Namespace", "label_values(perfpilot_sidecar_info, namespace)",
             "Namespaces with perfpilot sidecars"))
         .with_variable(label_variable(
             "pod", "Pod", 'label_values(perfpilot_sidecar_info{namespace=~"$namespace"}, pod)',
             "Pods with a perfpilot sidecar")))
    lay = Layout(d)

    lay.row("At a glance")
    glance = [
        stat("Sidecars",
             "Sidecars Prometheus scrapes among the selected pods. Fewer than the pods you run: "
             "pods without the sidecar (see perfpilot / Profiles) or a scrape that does not "
             "reach the pp-metrics port.",
             Query(f"count(perfpilot_sidecar_info{{{SEL}}}) or vector(0)")),
        stat("Not ready",
             "Sidecars not SERVING: warm kernels still compiling (the first seconds after "
             "start) or the agent shutting down. Lasting: read the sidecar container's log.",
             Query(f"count(perfpilot_sidecar_ready{{{SEL}}} == 0) or vector(0)"),
             thresholds=((None, "green"), (1, "red"))),
        stat("Config generations",
             "Distinct live-config generations among the sidecars. 1 is normal; more than 1 "
             "for longer than a few resync intervals: a rollout is stuck (the profile's "
             "ConfigApplied condition).",
             Query("count(count_values(\"generation\", "
                   f"perfpilot_sidecar_config_generation{{{SEL}}}))"),
             thresholds=((None, "green"), (2, "orange"))),
        stat("Worker restarts",
             "Kernel worker processes restarted after dying, in the dashboard's time range. "
             "Above 0: a worker was OOM-killed or crashed in a kernel; check the sidecar's "
             "memory limit (spec.resources.sidecar) and its log.",
             Query("sum(increase(perfpilot_sidecar_worker_restarts_total"
                   f"{{{SEL}}}[$__range])) or vector(0)"),
             thresholds=((None, "green"), (1, "red"))),
        stat("Rejected calls",
             "Calls answered RESOURCE_EXHAUSTED because a queue was full, in the time range. "
             "Above 0: more kernel calls than pools.maxQueue admits (add workers or replicas, "
             "or raise maxQueue if latency allows) or too many WatchEvents streams; the panel "
             "Rejected calls by class tells which.",
             Query("sum(increase(perfpilot_sidecar_rejected_total"
                   f"{{{SEL}}}[$__range])) or vector(0)"),
             thresholds=((None, "green"), (1, "orange"))),
        stat("Youngest agent",
             "Uptime of the most recently started sidecar. Small and never growing: a sidecar "
             "restarts in a loop (its counters reset each time); read its log and "
             "`kubectl describe pod`.",
             Query(f"min(perfpilot_sidecar_uptime_seconds{{{SEL}}})"), unit="s",
             thresholds=((None, "orange"), (300, "green"))),
    ]
    for panel in glance:
        lay.add(panel, width=4, height=4)

    lay.row("Heartbeat and app operations")
    lay.add(timeseries(
        "Heartbeat p50 / p99",
        "Time each sidecar spends answering Heartbeat, p50 and p99 over the window. Well "
        "under a millisecond is normal; high p99: the sidecar is CPU-throttled (raise "
        "spec.resources.sidecar CPU) or the node is overloaded. " + BUCKETS,
        _quantiles("perfpilot_sidecar_heartbeat_duration_seconds", "pod"), unit="s"),
        width=12, height=8)
    lay.add(timeseries(
        "App calls per second by op",
        "Calls the app measured with measure(), by op, over the selected pods. A drop to 0: "
        "the app stopped recording (or receiving traffic); a jump: more load, watch the "
        "latency panels.",
        [Query(_rate("perfpilot_sidecar_app_latency_seconds_count", "op"), "{{op}}")],
        unit="reqps"),
        width=12, height=8)
    lay.add(timeseries(
        "App latency by op: p50 / p95 / p99",
        "Latency the app recorded per op over the selected pods (pick one pod to see it "
        "alone). One op slow: that code path or its dependency; all ops slow together: the pod "
        "is saturated (CPU and queue below). " + BUCKETS,
        _quantiles("perfpilot_sidecar_app_latency_seconds", "op", (0.5, 0.95, 0.99)),
        unit="s"),
        width=12, height=8)
    lay.add(timeseries(
        "App error ratio by op",
        "Share of each op's measured calls the app marked as errors. Above 0: that op fails; "
        "the reason is in the app's log.",
        [Query(f"{_rate('perfpilot_sidecar_app_errors_total', 'op')} / "
               f"({_rate('perfpilot_sidecar_app_latency_seconds_count', 'op')} > 0)",
               "{{op}}")], unit="percentunit"),
        width=12, height=8)

    lay.row("gRPC")
    lay.add(timeseries(
        "RPC rate by method and code",
        "Finished calls to the agent per second, by method and status code. Codes other than "
        "OK: RESOURCE_EXHAUSTED (full queue: more workers or replicas), UNAUTHENTICATED (a control "
        "call without the operator's certificate), PERMISSION_DENIED (Configure over the "
        "socket), FAILED_PRECONDITION (kernels with processWorkers 0), INVALID_ARGUMENT (a "
        "client bug).",
        [Query(_rate("perfpilot_sidecar_rpc_total", "method, code"), "{{method}} {{code}}")],
        unit="reqps"),
        width=12, height=8)
    lay.add(timeseries(
        "RPC errors and auth failures",
        "Calls that did not end OK, by method and code, and calls refused by who may call "
        "what: a control call on the plaintext health port or with a certificate that is not "
        "the operator's, Configure over the Unix socket. Refused TLS handshakes (no or a "
        "foreign client certificate) are not counted: grpc-core does not report them.",
        [Query(_rate("perfpilot_sidecar_rpc_total", "method, code", 'code!="OK"'),
               "{{method}} {{code}}"),
         Query(_rate("perfpilot_sidecar_auth_failures_total", "pod"), "{{pod}} auth failures")],
        unit="reqps"),
        width=12, height=8)
    lay.add(timeseries(
        "RPC handler latency p99 by method",
        "Time spent in the agent's handler per method (p99). RunKernel includes the kernel; "
        "the others should stay in microseconds: high values there mean a CPU-starved "
        "sidecar. " + BUCKETS,
        [Query(_quantile(0.99, "perfpilot_sidecar_rpc_duration_seconds", "method"),
               "{{method}}")], unit="s"),
        width=24, height=8)

    lay.row("Kernels, pool and queue")
    lay.add(timeseries(
        "Kernel latency p50 / p99",
        "RunKernel latency (admission to result) per kernel. p99 far above p50: calls wait in "
        "the queue; compare with queue depth and pool utilization. " + BUCKETS,
        _quantiles("perfpilot_sidecar_kernel_duration_seconds", "kernel"), unit="s"),
        width=12, height=8)
    lay.add(timeseries(
        "Kernel calls, cache hits and errors",
        "RunKernel calls per second by kernel, those answered from the cache, and those that "
        "failed. Errors: bad inputs from the app or a dying worker (worker restarts).",
        [Query(_rate("perfpilot_sidecar_kernel_duration_seconds_count", "kernel"),
               "{{kernel}} calls"),
         Query(_rate("perfpilot_sidecar_kernel_cache_hits_total", "kernel"),
               "{{kernel}} cache hits"),
         Query(_rate("perfpilot_sidecar_kernel_errors_total", "kernel"), "{{kernel}} errors")],
        unit="reqps"),
        width=12, height=8)
    lay.add(timeseries(
        "Queue depth",
        "Kernel calls waiting for a worker, per pod. Above 0 for long: every worker is busy; "
        "raise pools.processWorkers (within the CPU limit) or add replicas.",
        [Query(f"perfpilot_sidecar_queue_depth{{{SEL}}}", "{{pod}}")], unit="short"),
        width=8, height=8)
    lay.add(timeseries(
        "Kernel calls in flight and admission limit",
        "Calls admitted (running and queued) against the limit pools.maxQueue. At the limit, "
        "new calls are rejected with RESOURCE_EXHAUSTED.",
        [Query(f"perfpilot_sidecar_kernels_in_flight{{{SEL}}}", "{{pod}} in flight"),
         Query(f"perfpilot_sidecar_max_queue{{{SEL}}}", "{{pod}} limit")], unit="short"),
        width=8, height=8)
    lay.add(timeseries(
        "Pool utilization",
        "Busy workers / workers per pod. Near 100% with a queue: add workers or replicas; "
        "near 0% with many workers: lower pools.processWorkers.",
        [Query(f"perfpilot_sidecar_pool_utilization_ratio{{{SEL}}}", "{{pod}}")],
        unit="percentunit", max_val=1),
        width=8, height=8)
    lay.add(timeseries(
        "Rejected calls by class",
        "Calls refused per second: kernel (RunKernel beyond pools.maxQueue calls in flight: "
        "the sidecar is overloaded; add workers or replicas) or events (a WatchEvents stream "
        "beyond the agent's --max-watchers: a client opens streams without closing them).",
        [Query(_rate("perfpilot_sidecar_rejected_total", "pod, class"), "{{pod}} {{class}}")],
        unit="reqps"),
        width=12, height=8)
    lay.add(timeseries(
        "Worker restarts",
        "Kernel workers restarted after dying, per pod. Above 0: a worker was OOM-killed or "
        "crashed; raise the sidecar's memory limit or look for the failing kernel in its log.",
        [Query(f"sum by (pod) (increase(perfpilot_sidecar_worker_restarts_total{{{SEL}}}"
               f"[{WINDOW}]))", "{{pod}}")], unit="short", bars=True),
        width=12, height=8)

    lay.row("Cache")
    lay.add(timeseries(
        "Cache hit ratio",
        "Reads that found a live entry, over the window and since the agent started. Low: "
        "the TTL is shorter than the reuse interval (raise cache.ttl) or entries are evicted "
        "before reuse (raise cache.maxEntries).",
        [Query(_hit_ratio("perfpilot_sidecar_cache"), "{{pod}}"),
         Query(f"perfpilot_sidecar_cache_hit_ratio{{{SEL}}}", "{{pod}} since start")],
        unit="percentunit", max_val=1),
        width=12, height=8)
    lay.add(timeseries(
        "Cache evictions, expirations and invalidations",
        "Entries removed per second: evicted because the cache was full (LRU), expired by TTL, "
        "or invalidated by the app. Many evictions: cache.maxEntries is too small for the "
        "working set.",
        [Query(_rate("perfpilot_sidecar_cache_evictions_total", "pod"), "{{pod}} evicted"),
         Query(_rate("perfpilot_sidecar_cache_expirations_total", "pod"), "{{pod}} expired"),
         Query(_rate("perfpilot_sidecar_cache_invalidations_total", "pod"),
               "{{pod}} invalidated")], unit="ops"),
        width=12, height=8)
    lay.add(timeseries(
        "Cache entries and capacity",
        "Entries held against cache.maxEntries. Pinned at capacity with evictions: raise "
        "maxEntries if memory allows (cache bytes next to it).",
        [Query(f"perfpilot_sidecar_cache_entries{{{SEL}}}", "{{pod}} entries"),
         Query(f"perfpilot_sidecar_cache_max_entries{{{SEL}}}", "{{pod}} capacity")],
        unit="short"),
        width=12, height=8)
    lay.add(timeseries(
        "Cache bytes",
        "Approximate bytes the cache holds, part of the sidecar's memory. Growing toward the "
        "sidecar's memory limit: lower cache.maxEntries or raise the limit.",
        [Query(f"perfpilot_sidecar_cache_bytes{{{SEL}}}", "{{pod}}")], unit="bytes"),
        width=12, height=8)
    lay.add(timeseries(
        "L1 (in-app near-cache) hit ratio",
        "Reads the apps' perfpilot clients answered from their in-process L1 (cache.l1), over "
        "the window and since the sidecar started; L1 hits never reach the sidecar, so they are "
        "not in the cache hit ratio above. Low with L1 on: cache.l1.maxEntries or maxBytes too "
        "small for the working set, values over cache.l1.maxValueBytes, or many writes "
        "invalidating entries (invalidations below).",
        [Query(_hit_ratio("perfpilot_sidecar_cache_l1"), "{{pod}}"),
         Query(f"perfpilot_sidecar_cache_l1_hit_ratio{{{SEL}}}", "{{pod}} since start")],
        unit="percentunit", max_val=1),
        width=12, height=8)
    lay.add(timeseries(
        "L1 invalidations, evictions and resyncs",
        "Entries per second the clients' L1s dropped because the sidecar announced a write or "
        "invalidation, evicted because L1 was full, and resyncs (L1 cleared because a client's "
        "event stream broke or lost events; above 0 means restarts or a client too slow to read "
        "its events).",
        [Query(_rate("perfpilot_sidecar_cache_l1_invalidations_total", "pod"), "{{pod}} invalidated"),
         Query(_rate("perfpilot_sidecar_cache_l1_evictions_total", "pod"), "{{pod}} evicted"),
         Query(_rate("perfpilot_sidecar_cache_l1_resyncs_total", "pod"), "{{pod}} resyncs"),
         Query(_rate("perfpilot_sidecar_cache_dependency_invalidations_total", "pod"),
               "{{pod}} dependents dropped (sidecar)")], unit="ops"),
        width=12, height=8)
    lay.add(timeseries(
        "L1 staleness (event delivery)",
        "Time from a write or invalidation in the sidecar to a client's L1 applying it: the "
        "longest an L1 may serve a value already changed. Growing: the app's event loop or "
        "threads are starved (CPU), or the sidecar is overloaded.",
        _quantiles("perfpilot_sidecar_cache_l1_staleness_seconds", "pod"), unit="s"),
        width=24, height=8)

    lay.row("Resources and events")
    lay.add(timeseries(
        "CPU by role",
        "CPU of the agent process and of all kernel workers together (100% = one core). "
        "Close to the sidecar's CPU limit: it is throttled and every latency above grows; "
        "raise spec.resources.sidecar CPU or lower pools.processWorkers.",
        [Query(f"perfpilot_sidecar_process_cpu_percent{{{SEL}}}", "{{pod}} {{role}}")],
        unit="percent"),
        width=12, height=8)
    lay.add(timeseries(
        "Resident memory by role",
        "Resident memory of the agent and of all kernel workers together. Near the sidecar's "
        "memory limit: the kernel OOM-kills it (worker restarts, or the container "
        "restarting); raise the limit or lower cache.maxEntries and processWorkers.",
        [Query(f"perfpilot_sidecar_process_resident_memory_bytes{{{SEL}}}",
               "{{pod}} {{role}}")], unit="bytes"),
        width=12, height=8)
    lay.add(timeseries(
        "Events published by type",
        "Agent events per second by type (config_applied, pool_resized, overload, "
        "worker_died, ...). overload or worker_died: see the pool and queue row.",
        [Query(_rate("perfpilot_sidecar_events_published_total", "type"), "{{type}}")],
        unit="ops", bars=True),
        width=12, height=8)
    lay.add(timeseries(
        "Event watchers and dropped events",
        "Open WatchEvents streams per pod and events dropped because a subscriber read too "
        "slowly. Dropped events: the subscriber (usually the app) misses config changes; make "
        "it consume the stream faster.",
        [Query(f"perfpilot_sidecar_event_watchers{{{SEL}}}", "{{pod}} watchers"),
         Query(_rate("perfpilot_sidecar_events_dropped_total", "pod"), "{{pod}} dropped/s")],
        unit="short"),
        width=12, height=8)
    return d
