"""The coverage audit: selected pods running without the sidecar, and what re-creates them.

The webhook injects only at pod creation, so a pod that started before its profile existed, or
while the webhook was unavailable, stays uninjected until it is re-created: the advice names the
workload to restart (found through ownerReferences, a Deployment's through its ReplicaSet), never
"label it" for a pod that is labelled already. Pure; the I/O is in perfpilot_operator/coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfpilot_operator.logic.injection import OPT_IN_LABEL

# `kubectl rollout restart` works on these; other controllers' pods are deleted and re-created.
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"   # what `kubectl rollout restart` sets


@dataclass(frozen=True)
class Uninjected:
    """A selected running pod without the sidecar."""

    pod: str
    opted_in: bool                         # carries perfpilot.io/inject=true
    workload: tuple[str, str] | None       # its top controller (kind, name); None: a bare pod


def workload(owner: tuple[str, str] | None, replicaset_owner: tuple[str, str] | None,
             template_hash: str | None = None) -> tuple[str, str] | None:
    """The pod's top controller: a ReplicaSet's own controller (a Deployment) when it has one.
    A ReplicaSet the operator does not watch (a watch filtered to opted-in objects) is read by
    the Deployment controller's naming: `<deployment>-<pod-template-hash>`, the hash also a
    label of the pod."""
    if owner is None or owner[0] != "ReplicaSet":
        return owner
    if replicaset_owner is not None:
        return replicaset_owner
    suffix = f"-{template_hash}"
    if template_hash and owner[1].endswith(suffix) and len(owner[1]) > len(suffix):
        return ("Deployment", owner[1][: -len(suffix)])
    return owner


def _fix(kind: str, name: str) -> str:
    if kind in RESTARTABLE:
        return f"kubectl rollout restart {kind.lower()}/{name}"
    return f"delete the pods of {kind.lower()}/{name} ({kind} re-creates them)"


def advice(pods: list[Uninjected]) -> str:
    """What re-creates the pods with the sidecar, one clause per workload (names sorted)."""
    restart: list[str] = []
    label: list[str] = []
    bare: list[str] = []
    seen: set[tuple[str, str]] = set()
    for p in sorted(pods, key=lambda p: (p.workload or ("", ""), p.pod)):
        if p.workload is None:
            bare.append(p.pod)
            continue
        if p.workload in seen:
            continue
        seen.add(p.workload)
        kind, name = p.workload
        if any(q.workload == p.workload and not q.opted_in for q in pods):
            label.append(f"{kind.lower()}/{name}")
        else:
            restart.append(_fix(kind, name))
    parts = restart[:]
    if label:
        parts.append(f"add the label {OPT_IN_LABEL}=true to the pod template of "
                     + ", ".join(label) + " (the webhook sees only opted-in pods; the edit "
                     "rolls them)")
    if bare:
        parts.append("delete and re-create pod " + ", ".join(bare)
                     + (f" (with the label {OPT_IN_LABEL}=true)"
                        if any(not p.opted_in for p in pods if p.workload is None) else ""))
    return "; ".join(parts)


def watchdog_due(pods: list[Uninjected], restarted: dict[str, float], now: float,
                 every: float) -> list[str]:
    """Deployments the watchdog restarts now: with an opted-in pod that lacks the sidecar (a
    pod not opted in would come back without it: restarting cannot help), and not restarted
    by the watchdog in the last `every` seconds (its own restart takes a while to replace the
    pods; a webhook that keeps failing must not turn into a restart loop). Bare pods never."""
    due = sorted({p.workload[1] for p in pods
                  if p.opted_in and p.workload is not None and p.workload[0] == "Deployment"})
    return [d for d in due if now - restarted.get(d, float("-inf")) >= every]
