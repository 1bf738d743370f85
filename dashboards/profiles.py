"""`perfpilot / Profiles`: the operator's view, one line per PerfProfile.

Built only from the operator's own metrics (operator/perfpilot_operator/metrics.py): the merged
values alerts and autoscaling read, pod counts by state, active alerts and replicas. These are the
numbers behind `kubectl describe perfprofile`, over time.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.common import (Layout, Query, datasource_variable, label_variable,
                               new_dashboard, stat, table, timeseries)

UID = "perfpilot-profiles"
TITLE = "perfpilot / Profiles"
SEL = 'namespace=~"$namespace", profile=~"$profile"'
WHO = "{{namespace}}/{{profile}}"


def _metric(name: str) -> str:
    """A profile's merged metric (perfpilot_operator_profile_metric{metric=name})."""
    return f'perfpilot_operator_profile_metric{{{SEL}, metric="{name}"}}'


def _pods(state: str) -> str:
    return f'sum(perfpilot_operator_pods{{{SEL}, state="{state}"}}) or vector(0)'


def build() -> Dashboard:
    """The dashboard builder (common.encode turns it into the committed JSON)."""
    d = new_dashboard(
        UID, TITLE,
        "PerfProfiles as the operator sees them: merged latency, load, pods, alerts and "
        "autoscaling (the operator's own /metrics).")
    d = (d.with_variable(datasource_variable())
         .with_variable(label_variable(
             "namespace", "Namespace", "label_values(perfpilot_operator_pods, namespace)",
             "Namespaces with PerfProfiles"))
         .with_variable(label_variable(
             "profile", "Profile",
             'label_values(perfpilot_operator_pods{namespace=~"$namespace"}, profile)',
             "PerfProfiles in the selected namespaces")))
    lay = Layout(d)

    lay.row("At a glance")
    glance = [
        stat("Firing alerts",
             "Alerts of the selected profiles that are firing now (spec.alerts held longer than "
             "their `for`); each also raised a Warning Event AlertFiring and set the Alerting "
             "condition. Above 0: `kubectl describe perfprofile` names the alert and its value, "
             "and the rows below show which metric crossed its threshold.",
             Query('count(perfpilot_operator_alert_active'
                   f'{{{SEL}, state="firing"}}) or vector(0)'),
             thresholds=((None, "green"), (1, "red"))),
        stat("Pending alerts",
             "Alerts whose condition is true but has not yet lasted `for`. They fire unless the "
             "metric recovers; look at the metric now, before it pages someone.",
             Query('count(perfpilot_operator_alert_active'
                   f'{{{SEL}, state="pending"}}) or vector(0)'),
             thresholds=((None, "green"), (1, "orange"))),
        stat("Pods without sidecar",
             "Running pods a profile selects that do not run the sidecar: they started before "
             "the profile, without the label perfpilot.io/inject=true, or while the webhook was "
             "down. They are neither configured nor measured. Fix: label the pod template "
             "perfpilot.io/inject=true and `kubectl rollout restart`; the InjectionComplete "
             "condition lists them.",
             Query(_pods("uninjected")), thresholds=((None, "green"), (1, "orange"))),
        stat("Sidecars not answering",
             "Injected pods whose sidecar failed Configure or GetStats in the operator's last "
             "pass; their stats are left out of the merged metrics (and autoscaling holds when "
             "no sidecar answers). The Degraded condition names the pods and gRPC codes: check "
             "the sidecar container's logs and restarts, and that the operator reaches the "
             "pods on the sidecar's gRPC port (NetworkPolicy).",
             Query(_pods("unhealthy")), thresholds=((None, "green"), (1, "red"))),
        stat("Pods with stale resources",
             "Running pods that still have old requests/limits after spec.resources changed "
             "(in-place resize refused, or a server older than 1.33). The ResourcesApplied "
             "condition gives the reason; `kubectl rollout restart` applies the new values.",
             Query(_pods("stale")), thresholds=((None, "green"), (1, "orange"))),
        stat("Sidecars configured",
             "Share of injected pods whose sidecar applied the profile's current generation. "
             "Below 100% for more than a few resync intervals: a rollout is stuck; the "
             "ConfigApplied condition shows n/m and Sidecars not answering shows why.",
             Query(f'sum(perfpilot_operator_pods{{{SEL}, state="configured"}})'
                   f' / (sum(perfpilot_operator_pods{{{SEL}, state="injected"}}) > 0)'),
             unit="percentunit",
             thresholds=((None, "red"), (0.9, "orange"), (1, "green"))),
    ]
    for panel in glance:
        lay.add(panel, width=4, height=4)

    lay.row("Latency (merged across each profile's pods)")
    lay.add(timeseries(
        "App latency p95 / p99",
        "What the app recorded with measure(), all ops together, merged exactly across the "
        "profile's pods (bucket sums, not averaged percentiles) over the last resync interval: "
        "the value app_latency_* alerts and autoscaling read. p99 rising alone: a few slow "
        "calls (a slow dependency, GC, cold cache); see the ops in perfpilot / Sidecars. "
        "p95 and p99 rising together: the pods are saturated; check queue depth and CPU below, "
        "then maxReplicas or spec.resources.",
        [Query(_metric("app_latency_p95_seconds"), f"{WHO} p95"),
         Query(_metric("app_latency_p99_seconds"), f"{WHO} p99")], unit="s"),
        width=12, height=8)
    lay.add(timeseries(
        "Heartbeat p99",
        "Time the sidecars spend answering Heartbeat (p99 merged across pods). A healthy agent "
        "answers in well under a millisecond; high values mean the sidecar is starved of CPU "
        "(raise spec.resources.sidecar CPU limits) or the node is overloaded.",
        [Query(_metric("heartbeat_p99_seconds"), WHO)], unit="s"),
        width=12, height=8)
    lay.add(timeseries(
        "Kernel p99",
        "RunKernel latency from admission to result, p99 merged across pods. Rising with queue "
        "depth: calls wait for a worker; raise pools.processWorkers (within the CPU limit) or "
        "let autoscaling add replicas. Rising alone: larger inputs, or workers throttled.",
        [Query(_metric("kernel_p99_seconds"), WHO)], unit="s"),
        width=12, height=8)
    lay.add(timeseries(
        "App error ratio",
        "Share of the app's measured calls it marked as errors in the last pass. Above 0: the "
        "app itself fails; the errors per op are in perfpilot / Sidecars, the cause in the "
        "app's logs.",
        [Query(_metric("app_error_ratio"), WHO)], unit="percentunit"),
        width=12, height=8)

    lay.row("Load (per replica)")
    lay.add(timeseries(
        "Queue depth",
        "Kernel calls waiting for a worker, averaged per replica: what autoscaling on "
        "queue_depth compares with its target. Above 0 for long: every worker is busy; raise "
        "pools.processWorkers (if the CPU limit allows) or check that autoscaling is not at "
        "maxReplicas.",
        [Query(_metric("queue_depth"), WHO)], unit="short"),
        width=12, height=8)
    lay.add(timeseries(
        "Pool utilization",
        "Busy kernel workers / workers over the profile's pods. Near 100% with a growing queue: "
        "add workers or replicas; near 0% with many workers: lower pools.processWorkers to "
        "give the CPU back to the app.",
        [Query(_metric("pool_utilization"), WHO)], unit="percentunit", max_val=1),
        width=12, height=8)
    lay.add(timeseries(
        "Sidecar CPU and memory",
        "cpu: the sidecars' CPU (agent and workers) as a share of the CPUs they see; memory: "
        "their resident memory as a share of spec.resources.sidecar memory limit (absent "
        "without one). Memory near 100%: the sidecar will be OOM-killed; raise the limit or "
        "lower cache.maxEntries. CPU near 100%: fewer workers or more CPU.",
        [Query(_metric("cpu_utilization"), f"{WHO} cpu"),
         Query(_metric("memory_utilization"), f"{WHO} memory")], unit="percentunit"),
        width=12, height=8)
    lay.add(timeseries(
        "Cache hit ratio",
        "Share of cache reads that found a live entry, over all the profile's pods. Low: the "
        "TTL is shorter than the reuse interval (raise cache.ttl) or the cache is too small "
        "(evictions in perfpilot / Sidecars; raise cache.maxEntries).",
        [Query(_metric("cache_hit_ratio"), WHO)], unit="percentunit", max_val=1),
        width=12, height=8)

    lay.row("Pods and autoscaling")
    lay.add(timeseries(
        "Pods by state",
        "selected: running pods the selector matches; injected: with the sidecar; configured: "
        "sidecar on the current generation; unhealthy: sidecar did not answer; uninjected: "
        "without sidecar; stale: old requests/limits. In a healthy profile selected = injected "
        "= configured and the others are 0.",
        [Query(f"perfpilot_operator_pods{{{SEL}}}", f"{WHO} {{{{state}}}}")],
        unit="short", steps=True),
        width=12, height=8)
    lay.add(timeseries(
        "Replicas: current and desired",
        "The target's replicas and the autoscaler's last decision. desired above current for "
        "long: the scale call fails (ScalingActive=False, reason ScaleFailed) or a bound "
        "holds; desired pinned at maxReplicas with alerts firing: raise maxReplicas or make "
        "the pods faster.",
        [Query(f"perfpilot_operator_replicas{{{SEL}}}", f"{WHO} {{{{kind}}}}")],
        unit="short", steps=True),
        width=12, height=8)
    lay.add(timeseries(
        "Scale events",
        "Scale changes the operator made, by direction. Up and down alternating within minutes "
        "(flapping): widen the stabilization windows or the tolerance in spec.autoscaling.",
        [Query("sum by (namespace, profile, direction) "
               f"(increase(perfpilot_operator_scale_events_total{{{SEL}}}[$__rate_interval]))",
               f"{WHO} {{{{direction}}}}")],
        unit="short", bars=True),
        width=24, height=7)

    lay.add(timeseries(
        "Operator calls to sidecars that failed",
        "Configure rounds (after retries) and GetStats calls that did not return OK, by gRPC "
        "status code, per second. UNAVAILABLE / DEADLINE_EXCEEDED: the sidecar is down, frozen or "
        "unreachable from the operator (the Degraded condition names the pods); "
        "UNAVAILABLE also when the TLS handshake fails (a pod admitted under a CA that has "
        "since expired: re-create it); INVALID_ARGUMENT "
        "on Configure: a sidecar older than the operator rejects the new config.",
        [Query("sum by (namespace, profile, result) "
               f'(rate(perfpilot_operator_configure_calls_total{{{SEL}, result!="OK"}}'
               "[$__rate_interval]))", f"{WHO} Configure {{{{result}}}}"),
         Query("sum by (namespace, profile, result) "
               f'(rate(perfpilot_operator_getstats_calls_total{{{SEL}, result!="OK"}}'
               "[$__rate_interval]))", f"{WHO} GetStats {{{{result}}}}")],
        unit="reqps"),
        width=24, height=7)

    lay.row("Operator replicas")
    lay.add(timeseries(
        "Leader",
        "1 on the operator replica that holds the leader Lease and runs rollout, stats, alerts, "
        "autoscaling and the audit; 0 on the others (they serve the webhooks only). No line at "
        "1: no replica leads (profiles' status, scaling and alerts pause; `kubectl get lease -n "
        "<operator namespace>`); two at once: two releases, or a replica cut off from the API "
        "server that has not yet noticed (it stops acting within 7 s).",
        [Query("max by (pod) (perfpilot_operator_leader)", "{{pod}}")],
        unit="short", steps=True),
        width=12, height=7)
    lay.add(timeseries(
        "Webhook configurations",
        "1 while each of perfpilot's webhook configurations exists (as the leader sees it). 0: "
        "it was deleted - opted-in pods get no sidecar; under the chart's RBAC the operator may "
        "not re-create it: `helm upgrade --install ... --reuse-values` or `helm rollback`. Bars "
        "below: configurations the leader patched back (changed behind its back) or created.",
        [Query("max by (name) (perfpilot_operator_webhook_configuration_present)",
               "{{name}} present"),
         Query("sum by (name, action) (increase("
               "perfpilot_operator_webhook_configuration_restores_total[$__rate_interval]))",
               "{{name}} {{action}}")],
        unit="short", steps=True),
        width=12, height=7)
    lay.add(timeseries(
        "Profiles per replica",
        "How many profiles each operator replica reconciles. Unsharded: all of them on the "
        "leader. With sharding.enabled: each replica's share of the profiles, spread by "
        "rendezvous hashing over the live replicas (dashed: how many replicas each one sees); a "
        "replica joining or leaving moves only its share, which the new owner takes after a "
        "10 s handoff. Uneven shares are expected with few profiles; a replica at 0 for long "
        "while others hold all: it cannot renew its member Lease (its log says why).",
        [Query("max by (pod) (perfpilot_operator_profiles_owned)", "{{pod}} profiles"),
         Query("max by (pod) (perfpilot_operator_shard_members)", "{{pod}} sees replicas")],
        unit="short", steps=True),
        width=24, height=7)
    lay.add(timeseries(
        "Webhook reviews",
        "How long the operator replicas take to answer an admission review (pod injection, "
        "profile validation), from reading the request to the response: p50 and p99 over the "
        "window, all replicas together. A few ms is the handling itself; the API server's own timing of the same calls "
        "(apiserver_admission_webhook_admission_duration_seconds, if scraped) adds the network, "
        "TLS and its own load. High here while the operator is busy: the replica's CPU.",
        [Query(f"histogram_quantile({q}, sum by (webhook, le) (rate("
               "perfpilot_operator_webhook_duration_seconds_bucket[$__rate_interval])))",
               f"{{{{webhook}}}} p{round(q * 100)}") for q in (0.5, 0.99)],
        unit="s"),
        width=24, height=7)

    lay.row("Alerts")
    lay.add(table(
        "Active alerts",
        "Pending and firing alerts now, one row each (the profile's status.activeAlerts). "
        "`kubectl describe perfprofile -n <namespace> <profile>` shows their values and the "
        "Events; the alert's description in spec.alerts says what to do.",
        Query(f"perfpilot_operator_alert_active{{{SEL}}}"),
        hide=("Time", "Value", "__name__", "job", "instance", "endpoint", "pod", "container",
              "service")),
        width=12, height=8)
    lay.add(timeseries(
        "Alerts over time",
        "Alerts pending or firing, by alert and state: when an alert started and how often it "
        "comes back. One that flaps between pending and inactive needs a longer `for` or a "
        "threshold with more headroom.",
        [Query(f"sum by (namespace, profile, alert, state) "
               f"(perfpilot_operator_alert_active{{{SEL}}})",
               f"{WHO} {{{{alert}}}} {{{{state}}}}")],
        unit="short", steps=True),
        width=12, height=8)
    return d
