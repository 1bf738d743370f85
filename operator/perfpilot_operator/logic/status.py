"""A profile's status from what one pass found: pure, so every condition is table-tested.

The pass's steps (rollout, resize, observe, coverage) return data; `compose_status` turns it into
the status subresource: pod counts as the sidecars reported them in this pass, and conditions
whose lastTransitionTime moves only when their status flips.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from perfpilot_operator.logic.conditions import (
    PodView, Refusal, count_pods, refusal_condition, set_condition,
)
from perfpilot_operator.logic.readback import with_reports


class Cond(NamedTuple):
    type: str
    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Rollout:
    """Configure's outcome: the generation each sidecar reports now, and who failed."""

    reported: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resize:
    """In-place resize's outcome; `supported` False: the API server has no pods/resize."""

    resized: int = 0
    stale: dict[str, str] = field(default_factory=dict)
    supported: bool = True


@dataclass(frozen=True)
class Observed:
    """The monitoring half (stats, alerts, autoscaling): what it adds to status and the
    conditions it sets."""

    unreachable: dict[str, str] = field(default_factory=dict)
    # pod name -> the generation its sidecar reported (GetStats): what it runs.
    generations: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)     # activeAlerts, replicas
    conditions: tuple[Cond, ...] = ()


def _joined(items: dict[str, str], n: int) -> str:
    return "; ".join(f"{k}: {v}" for k, v in sorted(items.items())[:n])


def compose_status(*, generation: int, previous: dict[str, Any], pods: list[PodView],
                   rollout: Rollout, resize: Resize, refusals: list[Refusal],
                   observed: Observed | None, coverage_advice: str = "",
                   now: str | None = None) -> dict[str, Any]:
    """The new status. `previous` is the current status (for transition times);
    `coverage_advice` says how to re-create the uninjected pods (logic/coverage.advice)."""
    unreachable = observed.unreachable if observed is not None else {}
    failures = rollout.failures
    views = with_reports(pods, rollout.reported, set(failures) | set(unreachable))
    counts = count_pods(views, generation)
    conds = list(previous.get("conditions") or [])

    def cond(c: Cond) -> None:
        nonlocal conds
        conds = set_condition(conds, type=c.type, status=c.ok, reason=c.reason,
                              message=c.message, generation=generation, now=now)

    if counts.selected == 0:
        cond(Cond("InjectionComplete", True, "NoPods", "no running pod matches spec.selector"))
    elif counts.uninjected:
        cond(Cond("InjectionComplete", False, "PodsWithoutSidecar",
                  f"{len(counts.uninjected)} of {counts.selected} selected pods run without the "
                  f"sidecar ({', '.join(counts.uninjected[:5])}): they started before the "
                  f"profile or while the webhook was unavailable; re-create them"
                  + (f": {coverage_advice}" if coverage_advice else "")))
    else:
        cond(Cond("InjectionComplete", True, "AllInjected",
                  f"all {counts.selected} selected pods run the sidecar"))
    refused = refusal_condition(refusals)
    if refused is not None:
        cond(Cond("InjectionComplete", False, *refused))
    if counts.injected == 0:
        cond(Cond("ConfigApplied", True, "NoSidecars", "no sidecar to configure yet"))
    else:
        done = counts.configured == counts.injected
        cond(Cond("ConfigApplied", done, "AllConfigured" if done else "RollingOut",
                  f"{counts.configured}/{counts.injected} sidecars at generation {generation}"))
    if failures:
        cond(Cond("Degraded", True, "SidecarsUnreachable",
                  f"{len(failures)} sidecar(s) failed Configure: {_joined(failures, 3)}"))
    elif unreachable:
        cond(Cond("Degraded", True, "SidecarsUnreachable",
                  f"{len(unreachable)} of {counts.injected} sidecar(s) did not answer GetStats "
                  f"(their metrics are left out; autoscaling holds): {_joined(unreachable, 3)}"))
    else:
        cond(Cond("Degraded", False, "AllHealthy", "every sidecar answered"))
    for c in observed.conditions if observed is not None else ():
        cond(c)
    ready = all(c["status"] == "True" for c in conds
                if c["type"] in ("InjectionComplete", "ConfigApplied")) and not failures
    cond(Cond("Ready", ready, "Reconciled" if ready else "NotReady",
              "profile applied to every selected pod" if ready else "see the other conditions"))
    if resize.stale:
        why = (f"in-place resize refused: {_joined(resize.stale, 3)}" if resize.supported
               else "the API server has no pods/resize before 1.33")
        cond(Cond("ResourcesApplied", False, "PodsStale",
                  f"{len(resize.stale)} running pod(s) keep old requests/limits ({why}); "
                  f"recreate them (kubectl rollout restart) to apply spec.resources"))
    elif resize.resized:
        cond(Cond("ResourcesApplied", True, "ResizedInPlace",
                  f"{resize.resized} running pod(s) resized in place (pods/resize), no restart"))
    else:
        cond(Cond("ResourcesApplied", True, "Applied", "every running pod has spec.resources"))
    return {"observedGeneration": generation,
            "pods": {**counts.as_status(), "stale": len(resize.stale)},
            "conditions": conds, **(observed.status if observed is not None else {})}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of `type_` in a status ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})
