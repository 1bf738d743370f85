"""The operator's own Prometheus metrics, per profile (bounded labels: namespace, profile)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

PROFILE_METRIC = Gauge(
    "perfpilot_operator_profile_metric", "A profile's merged metric over its sidecars "
    "(the values alerts and autoscaling read)", ["namespace", "profile", "metric"],
    registry=REGISTRY)
PODS = Gauge("perfpilot_operator_pods", "Selected pods by state "
             "(selected, injected, configured, unhealthy, uninjected)",
             ["namespace", "profile", "state"], registry=REGISTRY)
ALERT_ACTIVE = Gauge("perfpilot_operator_alert_active", "1 while an alert is pending or firing",
                     ["namespace", "profile", "alert", "severity", "state"], registry=REGISTRY)
REPLICAS = Gauge("perfpilot_operator_replicas", "Target replicas (current, desired)",
                 ["namespace", "profile", "kind"], registry=REGISTRY)
SCALE_EVENTS = Counter("perfpilot_operator_scale_events", "Scale changes made",
                       ["namespace", "profile", "direction"], registry=REGISTRY)
CONFIGURE_CALLS = Counter("perfpilot_operator_configure_calls", "Configure rounds per sidecar by "
                          "result (OK, or the gRPC status code after the retries)",
                          ["namespace", "profile", "result"], registry=REGISTRY)
GETSTATS_CALLS = Counter("perfpilot_operator_getstats_calls", "GetStats calls to sidecars by result "
                         "(OK, or the gRPC status code)", ["namespace", "profile", "result"],
                         registry=REGISTRY)

LEADER = Gauge("perfpilot_operator_leader", "1 on the replica that holds the leader Lease and "
               "runs the control loops, 0 on the others (they serve webhooks only)", ["pod"],
               registry=REGISTRY)
PROFILES_OWNED = Gauge("perfpilot_operator_profiles_owned", "Profiles this replica reconciles "
                       "(PERFPILOT_SHARDING: its share; otherwise all on the leader, 0 on the "
                       "others)", ["pod"], registry=REGISTRY)
SHARD_MEMBERS = Gauge("perfpilot_operator_shard_members", "Live replicas the profiles are spread "
                      "over, as this replica sees them (PERFPILOT_SHARDING)", ["pod"],
                      registry=REGISTRY)
WEBHOOK_CONFIGURATION_PRESENT = Gauge(
    "perfpilot_operator_webhook_configuration_present", "1 while the named webhook configuration "
    "exists, 0 after it was deleted (set by the leader every resync)", ["name"],
    registry=REGISTRY)
WEBHOOK_CONFIGURATION_RESTORES = Counter(
    "perfpilot_operator_webhook_configuration_restores", "Webhook configurations patched back "
    "(drift) or re-created (deleted) by the operator", ["name", "action"], registry=REGISTRY)

WEBHOOK_SECONDS = Histogram(
    "perfpilot_operator_webhook_duration_seconds", "Admission reviews served, from reading the "
    "request to the response, on the operator's side (the API server's "
    "apiserver_admission_webhook_admission_duration_seconds adds the network, TLS and queueing)",
    ["webhook"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


def rpc_result(outcome: object) -> str:
    """The result label of an RPC outcome: OK, a gRPC status code name, or the exception's type."""
    if not isinstance(outcome, BaseException):
        return "OK"
    code = getattr(outcome, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:  # noqa: BLE001 - a code() that fails is still a failure
            pass
    return type(outcome).__name__


def serve(port: int, host: str) -> None:
    start_http_server(port, addr=host, registry=REGISTRY)


def set_or_clear(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
    """Set a series, or remove it when there is no value (absent, not a stale number)."""
    if value != value:  # nan
        if labels in gauge._metrics:  # noqa: SLF001 - prometheus-client has no "has series"
            gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)


def clear_profile(metric: Gauge | Counter, namespace: str, profile: str) -> None:
    for labels in list(metric._metrics):  # noqa: SLF001
        if labels[0] == namespace and labels[1] == profile:
            metric.remove(*labels)


def forget_profile(namespace: str, profile: str) -> None:
    """Drop every series of a deleted profile."""
    for metric in (PROFILE_METRIC, PODS, ALERT_ACTIVE, REPLICAS, SCALE_EVENTS, CONFIGURE_CALLS,
                   GETSTATS_CALLS):
        clear_profile(metric, namespace, profile)
