"""Operator settings, read from the environment in one place (flags of the chart map to these)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from perfpilot_operator.logic.injection import SidecarTemplate
from perfpilot_operator.logic.units import parse_duration


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _bool(name: str, default: bool) -> bool:
    """true/false (any case; also 1/0, yes/no); anything else is refused naming the variable,
    never read as false."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name}: {raw!r} is not a boolean; use true or false")


def _labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` -> {k: v, k2: v2}; a pair without `=` is refused naming it."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"PERFPILOT_WEBHOOK_NAMESPACE_LABELS: {pair!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Settings:
    namespace: str = "perfpilot-system"
    """The operator's own namespace; its pods are never sent to the pod webhook."""
    webhook_host: str = "127.0.0.1"
    """Address the webhook server listens on (0.0.0.0 in-cluster)."""
    webhook_port: int = 9443
    webhook_url_host: str = "127.0.0.1"
    """Host the API server uses to reach the webhook when registering by URL (out-of-cluster)."""
    webhook_url_port: int = 0
    """Port the API server calls when registering by URL (a load balancer's); 0: webhook_port."""
    webhook_service: str = ""
    """'namespace/name' of the webhook Service when in-cluster; empty registers by URL."""
    cert_dir: Path = Path.home() / ".cache" / "perfpilot" / "operator-certs"
    """This replica's certificates, issued at start from the CA Secret (certs.py): webhook serving
    pair, client pair for the sidecars, and the trust bundle."""
    register_webhooks: bool = True
    """Whether the leader keeps its webhook configurations as rendered (patches them back,
    re-creates them where RBAC allows)."""
    mutating_webhook: str = "perfpilot-pod-injector"
    validating_webhook: str = "perfpilot-profile-validator"
    """The names of the two configurations (the chart: <fullname>-pod-injector/-profile-validator)."""
    namespace_labels: dict[str, str] = field(default_factory=dict)
    """Only namespaces with these labels are sent to the webhooks (empty: every namespace)."""
    leader_election: bool = True
    """Whether replicas elect a leader by Lease (off: this process always acts; one replica only)."""
    leader_lease: str = "perfpilot-operator"
    """The Lease's name, in `namespace`."""
    leader_identity: str = ""
    """This replica's identity in the Lease (the chart: the pod's name); empty: host:webhook port."""
    sharding: bool = False
    """Whether the replicas spread the profiles among them (each reconciled by one replica, by
    rendezvous hashing over member Leases: shards.py); off: the leader reconciles every one."""
    exclude_namespaces: tuple[str, ...] = ()
    """Namespaces the pod webhook never sees, besides the operator's own (kube-system, ...)."""
    failure_policy: str = "Fail"
    """Pod webhook failurePolicy. Fail is safe: only opted-in pods are sent (objectSelector)."""
    native_sidecar: str = "auto"
    """auto: native sidecars (initContainers, restartPolicy Always) when the API server is >= 1.29."""
    sidecar: SidecarTemplate = field(default_factory=SidecarTemplate)
    rollout_concurrency: int = 32
    """Sidecars configured at once."""
    rpc_timeout: float = 2.0
    resync_interval: float = 5.0
    """Seconds between the periodic pass (late pods, stats, alerts, autoscaling, coverage)."""
    recreate_uninjected: bool = False
    """The coverage watchdog: restart (as `kubectl rollout restart`) a Deployment whose opted-in
    pods run without the sidecar. Off: the audit only advises (condition, Event, metric)."""
    recreate_interval: float = 600.0
    """The watchdog restarts one Deployment at most once per this many seconds."""
    audit_interval: float = 30.0
    """Seconds between the coverage audit's LISTs of a profile's pods that did not opt in (a new
    profile or selector is audited at the next pass)."""
    metrics_port: int = 8080                # -1: no /metrics server
    metrics_host: str = "0.0.0.0"
    health_port: int = 8081
    health_host: str = "0.0.0.0"
    """Where /healthz listens (the pod's probes need all interfaces; local runs use 127.0.0.1)."""

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        command = tuple(_env("PERFPILOT_SIDECAR_COMMAND", " ".join(d.sidecar.command)).split())
        return cls(
            namespace=_env("PERFPILOT_NAMESPACE", d.namespace),
            webhook_host=_env("PERFPILOT_WEBHOOK_HOST", d.webhook_host),
            webhook_port=int(_env("PERFPILOT_WEBHOOK_PORT", str(d.webhook_port))),
            webhook_url_host=_env("PERFPILOT_WEBHOOK_URL_HOST", d.webhook_url_host),
            webhook_url_port=int(_env("PERFPILOT_WEBHOOK_URL_PORT", "0")),
            webhook_service=_env("PERFPILOT_WEBHOOK_SERVICE", d.webhook_service),
            cert_dir=Path(_env("PERFPILOT_CERT_DIR", str(d.cert_dir))),
            register_webhooks=_bool("PERFPILOT_REGISTER_WEBHOOKS", d.register_webhooks),
            mutating_webhook=_env("PERFPILOT_MUTATING_WEBHOOK", d.mutating_webhook),
            validating_webhook=_env("PERFPILOT_VALIDATING_WEBHOOK", d.validating_webhook),
            namespace_labels=_labels(_env("PERFPILOT_WEBHOOK_NAMESPACE_LABELS", "")),
            leader_election=_bool("PERFPILOT_LEADER_ELECTION", d.leader_election),
            leader_lease=_env("PERFPILOT_LEADER_LEASE", d.leader_lease),
            leader_identity=_env("PERFPILOT_LEADER_IDENTITY", ""),
            sharding=_bool("PERFPILOT_SHARDING", d.sharding),
            failure_policy=_env("PERFPILOT_WEBHOOK_FAILURE_POLICY", d.failure_policy),
            exclude_namespaces=tuple(n.strip() for n in _env(
                "PERFPILOT_WEBHOOK_EXCLUDE_NAMESPACES", "").split(",") if n.strip()),
            native_sidecar=_env("PERFPILOT_NATIVE_SIDECAR", d.native_sidecar),
            sidecar=SidecarTemplate(
                image=_env("PERFPILOT_SIDECAR_IMAGE", d.sidecar.image),
                image_pull_policy=_env("PERFPILOT_SIDECAR_PULL_POLICY",
                                       d.sidecar.image_pull_policy),
                command=command,
                grpc_port=int(_env("PERFPILOT_SIDECAR_PORT", str(d.sidecar.grpc_port))),
                health_port=int(_env("PERFPILOT_SIDECAR_HEALTH_PORT", str(d.sidecar.health_port))),
                metrics_port=int(_env("PERFPILOT_SIDECAR_METRICS_PORT",
                                      str(d.sidecar.metrics_port))),
            ),
            rollout_concurrency=int(_env("PERFPILOT_ROLLOUT_CONCURRENCY",
                                         str(d.rollout_concurrency))),
            rpc_timeout=parse_duration(_env("PERFPILOT_RPC_TIMEOUT", "2s")),
            resync_interval=parse_duration(_env("PERFPILOT_RESYNC_INTERVAL", "5s")),
            recreate_uninjected=_bool("PERFPILOT_RECREATE_UNINJECTED", d.recreate_uninjected),
            recreate_interval=parse_duration(_env("PERFPILOT_RECREATE_INTERVAL", "10m")),
            audit_interval=parse_duration(_env("PERFPILOT_AUDIT_INTERVAL", "30s")),
            metrics_port=int(_env("PERFPILOT_METRICS_PORT", str(d.metrics_port))),
            metrics_host=_env("PERFPILOT_METRICS_HOST", d.metrics_host),
            health_port=int(_env("PERFPILOT_HEALTH_PORT", str(d.health_port))),
            health_host=_env("PERFPILOT_HEALTH_HOST", d.health_host),
        )
