"""Sidecar injection: the changes a mutating webhook makes to an opted-in pod.

Pure: takes the pod and the matching profile as plain dicts, returns the new values of the
fields it changes. Lists are returned whole (kopf replaces lists in a patch). Re-admission of
an already injected pod returns no changes.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from perfpilot_contract.liveconfig import live_sections
from perfpilot_contract.sharedcache import CA_ENV, PASSWORD_ENV
from perfpilot_contract.trust import CA_ANNOTATION, CA_DIR, CA_FILE

ANNOTATION_INJECTED = "perfpilot.io/injected"
ANNOTATION_GENERATION = "perfpilot.io/profile-generation"
LABEL_PROFILE = "perfpilot.io/profile"
OPT_IN_LABEL = "perfpilot.io/inject"
SIDECAR_NAME = "perfpilot-agent"
SOCKET_VOLUME = "perfpilot-socket"
SOCKET_DIR = "/var/run/perfpilot"
SHM_VOLUME = "perfpilot-shm"
SHM_DIR = "/dev/shm"
TMP_VOLUME = "perfpilot-tmp"
# The operator's CA certificate(s), public only: the webhook writes them into the pod's own
# annotation and a downwardAPI volume mounts that as a file. No Secret or ConfigMap in the app's
# namespace, nothing a pod can read that lets it call the sidecars' control port.
CA_VOLUME = "perfpilot-ca"
# The sidecar image's user (distroless "nonroot"); set explicitly so `runAsNonRoot` holds even
# when the image's USER is numeric-less or the pod runs its app as root.
SIDECAR_UID = 65532
# A pod's own /dev/shm is 64 MiB on containerd and CRI-O: too small for the shared-memory path.
DEFAULT_SHARED_MEMORY = "1Gi"
# The sidecar's startupProbe: kernels in spec.kernels.warm compile before the sidecar reports
# SERVING, and with a native sidecar the app container starts only after this probe succeeds.
STARTUP_PERIOD_S = 1
STARTUP_FAILURES = 180


@dataclass(frozen=True)
class SidecarTemplate:
    """How the sidecar container is started; the operator's settings fill this in."""

    image: str = "perfpilot/sidecar:0.1.0"
    image_pull_policy: str = ""           # empty: the API server's default for the tag
    command: tuple[str, ...] = ("perfpilot-sidecar",)
    grpc_port: int = 50051                # control port: mutual TLS, the operator only
    health_port: int = 50052              # plaintext Heartbeat + grpc.health.v1: the kubelet's probes
    metrics_port: int = 9464
    ca_bundle: str = ""                   # the operator's CA certificate(s), PEM (set per admission)
    native_sidecar: bool = True           # initContainer with restartPolicy: Always
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/agent.sock"


@dataclass(frozen=True)
class Injection:
    """Field -> new value, plus human-readable warnings for the admission response."""

    changes: dict[str, Any]
    warnings: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes


def is_injected(pod: dict[str, Any]) -> bool:
    spec = pod.get("spec", {})
    names = {c.get("name") for c in spec.get("initContainers", []) + spec.get("containers", [])}
    return SIDECAR_NAME in names


def _resources(block: dict[str, Any] | None) -> dict[str, Any]:
    if not block:
        return {}
    return {k: dict(block[k]) for k in ("requests", "limits") if block.get(k)}


def initial_config(spec: dict[str, Any]) -> str:
    """The profile's live config as the sidecar's PERFPILOT_CONFIG (CRD field names): a new pod
    runs the profile's pools, cache and kernels from its first second, before any Configure.
    The sidecar converts it with the contract's agent_config, as the operator does for Configure."""
    return json.dumps(live_sections(spec),
                      sort_keys=True, separators=(",", ":"))


def security_context(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's securityContext: everything Pod Security `restricted` asks of a container,
    plus a read-only root filesystem (the sidecar writes only to its emptyDir volumes). The pod's
    own fields are never changed: the seccomp profile is set on the sidecar only when the pod
    sets none (a pod-level profile, e.g. Localhost, applies to the sidecar as it is)."""
    ctx: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": SIDECAR_UID,
        "runAsGroup": SIDECAR_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if not (pod_spec.get("securityContext") or {}).get("seccompProfile"):
        ctx["seccompProfile"] = {"type": "RuntimeDefault"}
    return ctx


def shm_mount(container: dict[str, Any]) -> dict[str, Any] | None:
    """The container's own mount at /dev/shm, if it has one."""
    return next((m for m in container.get("volumeMounts", [])
                 if m.get("mountPath", "").rstrip("/") == SHM_DIR), None)


def shared_cache_env(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The shared cache tier's password (credentialsSecret) and private CA (tls.caSecret) as env vars
    from Secrets in the pod's namespace. The kubelet resolves them: the operator never reads a Secret.
    optional: a missing Secret or key leaves the tier down (reported, naming it), never an unstartable pod."""
    shared = (spec.get("cache") or {}).get("shared") or {}
    refs = ((PASSWORD_ENV, shared.get("credentialsSecret")), (CA_ENV, (shared.get("tls") or {}).get("caSecret")))
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"], "optional": True}}}
            for env, ref in refs if ref]


def sidecar_container(profile_ns: str, profile_name: str, tmpl: SidecarTemplate,
                      resources: dict[str, Any], config: str = "{}",
                      security: dict[str, Any] | None = None,
                      shm_volume: str = SHM_VOLUME,
                      extra_env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The sidecar's container spec. Its command line is what the e2e pod runner executes."""
    env = [
        {"name": "PERFPILOT_SOCKET", "value": tmpl.socket_path},
        {"name": "PERFPILOT_PORT", "value": str(tmpl.grpc_port)},
        {"name": "PERFPILOT_HEALTH_PORT", "value": str(tmpl.health_port)},
        {"name": "PERFPILOT_CA_FILE", "value": CA_FILE},
        {"name": "PERFPILOT_METRICS_PORT", "value": str(tmpl.metrics_port)},
        {"name": "PERFPILOT_LISTEN_HOST",
         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PERFPILOT_PROFILE", "value": f"{profile_ns}/{profile_name}"},
        {"name": "PERFPILOT_CONFIG", "value": config},
        {"name": "PERFPILOT_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *({"name": k, "value": v} for k, v in tmpl.extra_env),
        *(extra_env or ()),
    ]
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": tmpl.image,
        "command": list(tmpl.command),
        "env": env,
        "ports": [
            {"name": "pp-grpc", "containerPort": tmpl.grpc_port, "protocol": "TCP"},
            {"name": "pp-health", "containerPort": tmpl.health_port, "protocol": "TCP"},
            {"name": "pp-metrics", "containerPort": tmpl.metrics_port, "protocol": "TCP"},
        ],
        "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR},
                         {"name": shm_volume, "mountPath": SHM_DIR},
                         {"name": TMP_VOLUME, "mountPath": "/tmp"},
                         {"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True}],
        # The kubelet's gRPC probes speak plaintext: they use the health-only port.
        "startupProbe": {"grpc": {"port": tmpl.health_port}, "periodSeconds": STARTUP_PERIOD_S,
                         "failureThreshold": STARTUP_FAILURES},
        "readinessProbe": {"grpc": {"port": tmpl.health_port}, "periodSeconds": 5},
        "securityContext": security if security is not None else security_context({}),
    }
    if tmpl.image_pull_policy:
        container["imagePullPolicy"] = tmpl.image_pull_policy
    if resources:
        container["resources"] = resources
    if tmpl.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def ca_volume() -> dict[str, Any]:
    """The pod's own CA_ANNOTATION as the file ca.crt (downwardAPI: read-only, no API access)."""
    return {"name": CA_VOLUME, "downwardAPI": {"defaultMode": 0o444, "items": [
        {"path": "ca.crt", "fieldRef": {"fieldPath": f"metadata.annotations['{CA_ANNOTATION}']"}}]}}


def shared_memory(spec: dict[str, Any]) -> str:
    """spec.resources.sharedMemory: the size of the pod's /dev/shm (docs/kernels.md, "Sizing /dev/shm")."""
    return str((spec.get("resources") or {}).get("sharedMemory") or DEFAULT_SHARED_MEMORY)


def inject(pod: dict[str, Any], profile: dict[str, Any], tmpl: SidecarTemplate) -> Injection:
    """The changes that give `pod` the sidecar and the profile's resources."""
    if is_injected(pod):
        return Injection({})
    meta, spec = profile["metadata"], profile.get("spec", {})
    pod_spec = pod.get("spec", {})
    containers = copy.deepcopy(pod_spec.get("containers", []))
    if not containers:
        return Injection({}, ("pod has no containers; nothing injected",))
    warnings: list[str] = []

    app_res = spec.get("resources", {}).get("app", {})
    app_name = app_res.get("container")
    app_index = 0
    if app_name:
        matches = [i for i, c in enumerate(containers) if c.get("name") == app_name]
        if matches:
            app_index = matches[0]
        else:
            warnings.append(f"spec.resources.app.container {app_name!r} is not in the pod; "
                            f"using the first container {containers[0].get('name')!r}")
    app = containers[app_index]
    if _resources(app_res):
        app["resources"] = _resources(app_res)
    mounts = app.setdefault("volumeMounts", [])
    # /dev/shm: the app's own volume when it mounts one there, else ours; the two containers
    # exchange kernel inputs and outputs through it (segment names are paths in this tmpfs).
    own_shm = shm_mount(app)
    shm_volume = own_shm["name"] if own_shm else SHM_VOLUME
    for mount in ({"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR},
                  None if own_shm else {"name": SHM_VOLUME, "mountPath": SHM_DIR}):
        if mount is not None and mount not in mounts:
            mounts.append(mount)
    env = app.setdefault("env", [])
    known = {e.get("name") for e in env}
    for name, value in (("PERFPILOT_SOCKET", tmpl.socket_path),
                        ("PERFPILOT_PROFILE", f"{meta['namespace']}/{meta['name']}")):
        if name not in known:
            env.append({"name": name, "value": value})

    sidecar = sidecar_container(meta["namespace"], meta["name"], tmpl,
                                _resources(spec.get("resources", {}).get("sidecar")),
                                initial_config(spec), security_context(pod_spec),
                                shm_volume, shared_cache_env(spec))
    changes: dict[str, Any] = {}
    if tmpl.native_sidecar:
        changes["spec.initContainers"] = [*copy.deepcopy(pod_spec.get("initContainers", [])),
                                          sidecar]
        changes["spec.containers"] = containers
    else:
        changes["spec.containers"] = [*containers, sidecar]
    volumes = copy.deepcopy(pod_spec.get("volumes", []))
    for name, empty_dir in (
            (SOCKET_VOLUME, {"medium": "Memory", "sizeLimit": "1Mi"}),
            (SHM_VOLUME, None if own_shm else {"medium": "Memory",
                                               "sizeLimit": shared_memory(spec)}),
            (TMP_VOLUME, {"sizeLimit": "64Mi"})):
        if empty_dir is not None and not any(v.get("name") == name for v in volumes):
            volumes.append({"name": name, "emptyDir": empty_dir})
    if not any(v.get("name") == CA_VOLUME for v in volumes):
        volumes.append(ca_volume())
    changes["spec.volumes"] = volumes
    changes["metadata.labels"] = {LABEL_PROFILE: meta["name"]}
    changes["metadata.annotations"] = {
        ANNOTATION_INJECTED: "true",
        ANNOTATION_GENERATION: str(meta.get("generation", 0)),
        CA_ANNOTATION: tmpl.ca_bundle,
    }
    return Injection(changes, tuple(warnings))


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics (matchLabels AND matchExpressions); empty matches nothing
    here, because the CRD forbids empty selectors and a profile must never grab every pod."""
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not match_labels and not exprs:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in exprs:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def choose_profile(profiles: list[dict[str, Any]], labels: dict[str, str]
                   ) -> tuple[dict[str, Any] | None, list[str]]:
    """The one profile whose selector matches; with several (the validating webhook prevents
    that) the oldest wins and a warning names the others."""
    matching = [p for p in profiles if selector_matches(p.get("spec", {}).get("selector", {}),
                                                        labels)]
    if not matching:
        return None, []
    matching.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""),
                                 p["metadata"]["name"]))
    warnings = []
    if len(matching) > 1:
        others = ", ".join(p["metadata"]["name"] for p in matching[1:])
        warnings.append(f"several PerfProfiles select this pod; using "
                        f"{matching[0]['metadata']['name']!r}, ignoring {others}")
    return matching[0], warnings
