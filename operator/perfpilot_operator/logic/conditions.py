"""Status conditions (metav1.Condition shape) and pod counts, computed without I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

CONDITION_TYPES = ("Ready", "ConfigApplied", "InjectionComplete", "ResourcesApplied", "Degraded",
                   "Alerting", "ScalingActive")


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], *, type: str, status: bool, reason: str,
                  message: str, generation: int, now: str | None = None) -> list[dict[str, Any]]:
    """A new list with `type` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions if c.get("type") != type]
    old = next((c for c in conditions if c.get("type") == type), None)
    changed = old is None or old.get("status") != value
    out.append({
        "type": type, "status": value, "reason": reason, "message": message[:1000],
        "observedGeneration": generation,
        "lastTransitionTime": (now or now_iso()) if old is None or changed else old["lastTransitionTime"],
    })
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c["type"], len(order)))


@dataclass(frozen=True)
class PodView:
    """What the operator knows about one selected pod."""

    name: str
    ip: str | None
    running: bool
    injected: bool
    configured_generation: int = 0    # as its sidecar reported in this pass (0: no answer)
    healthy: bool = True
    # {"spec": {"containers": [{name, resources}], "initContainers": [...]}}: what a resize
    # decision needs, nothing more (the index holds one per pod).
    shape: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    # Its controller from ownerReferences, ("ReplicaSet", "web-5d8f"); None: a bare pod. With
    # `opted_in` (perfpilot.io/inject=true), what the coverage audit advises re-creating.
    owner: tuple[str, str] | None = field(default=None, compare=False, hash=False)
    opted_in: bool = field(default=False, compare=False, hash=False)
    template_hash: str | None = field(default=None, compare=False, hash=False)  # its label


@dataclass(frozen=True)
class PodCounts:
    selected: int
    injected: int
    configured: int
    unhealthy: int
    uninjected: tuple[str, ...]

    def as_status(self) -> dict[str, int]:
        return {"selected": self.selected, "injected": self.injected,
                "configured": self.configured, "unhealthy": self.unhealthy,
                "uninjected": len(self.uninjected)}


def count_pods(pods: list[PodView], generation: int) -> PodCounts:
    running = [p for p in pods if p.running]
    injected = [p for p in running if p.injected]
    return PodCounts(
        selected=len(running),
        injected=len(injected),
        # Ahead counts as not configured: that config is not the profile's.
        configured=sum(1 for p in injected if p.configured_generation == generation),
        unhealthy=sum(1 for p in injected if not p.healthy),
        uninjected=tuple(sorted(p.name for p in running if not p.injected)),
    )


@dataclass(frozen=True)
class Refusal:
    """A ReplicaSet whose pods the API server refuses (its ReplicaFailure condition): admission
    (Pod Security, a webhook, a quota) said no, so the selected pods never exist."""

    replicaset: str
    labels: dict[str, str] = field(compare=False, hash=False)
    message: str = ""


def refusal(replicaset: dict[str, Any]) -> Refusal | None:
    """The ReplicaSet's refusal, if the controller reports one and still wants pods."""
    spec, status = replicaset.get("spec") or {}, replicaset.get("status") or {}
    if not spec.get("replicas"):
        return None
    for c in status.get("conditions") or []:
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            return Refusal(replicaset["metadata"]["name"], dict(labels),
                           f"{c.get('reason', 'FailedCreate')}: {c.get('message', '')}")
    return None


def refusal_condition(refusals: list[Refusal]) -> tuple[str, str] | None:
    """(reason, message) of InjectionComplete=False when selected pods are refused at creation;
    the API server's own words name the field to fix."""
    if not refusals:
        return None
    first = sorted(refusals, key=lambda r: r.replicaset)
    return ("PodsRefused",
            f"the API server refuses the pods of {len(first)} ReplicaSet(s); "
            + "; ".join(f"{r.replicaset}: {r.message}" for r in first[:3]))
