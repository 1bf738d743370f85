"""The autoscaling decision: Kubernetes HPA's algorithm on a PerfProfile metric.

desired = ceil(current × metric / target), unchanged within the tolerance band; then the
stabilization windows (scale up to the lowest, down to the highest recommendation seen in the
window), the per-decision step limits, and min/max. A missing or stale metric holds the current
size and says why. Pure: the caller keeps the returned state and passes it back.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    """autoscaling.scaleUp / scaleDown."""

    stabilization_window: float = 0.0
    max_step: int = 4


@dataclass(frozen=True)
class AutoscalingSpec:
    """The parsed spec.autoscaling of a profile."""

    min_replicas: int = 1
    max_replicas: int = 10
    target: float = 50.0
    tolerance: float = 0.1
    scale_up: Policy = Policy(0.0, 4)
    scale_down: Policy = Policy(300.0, 1)
    on_missing_metrics: str = "hold"


@dataclass(frozen=True)
class Decision:
    """What to do now, and why (the reason goes to status and the ScalingActive condition)."""

    replicas: int
    reason: str
    message: str
    scaling_active: bool = True

    def changes(self, current: int) -> bool:
        return self.replicas != current


@dataclass
class ScalerState:
    """Recent recommendations: (time, replicas), oldest first, and when the scaler first saw
    the target (a new or restarted scaler has no history: it must not scale down before a whole
    down-window has passed, or an operator restart would shrink every workload at once)."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    started: float | None = None
    initial: int | None = None
    # Resumed from a profile's status (an operator restart or a leader change): the up-window's
    # history is lost too, so scaling up also waits a whole up-window, as scaling down does; a
    # restart lengthens a window at most, never shortens it.
    resumed: bool = False


def parse_time(value: object) -> float | None:
    """Epoch seconds of an RFC 3339 status time ("2026-01-02T03:04:05Z"); None if absent/bad."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def raw_recommendation(current: int, metric: float, target: float, tolerance: float) -> int:
    """HPA's core formula with the tolerance band around 1.0."""
    if target <= 0:
        raise ValueError("target must be > 0")
    ratio = metric / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    if current == 0:
        return max(1, math.ceil(ratio))
    # A tiny epsilon keeps ceil(3 × 1.0000000001) from becoming 4 through float noise.
    return math.ceil(current * ratio - 1e-9)


def decide(
    state: ScalerState,
    *,
    now: float,
    current: int,
    metric: float | None,
    spec: AutoscalingSpec,
    missing: int = 0,
) -> Decision:
    """One evaluation; mutates `state` (the recommendation history). `missing`: sidecars that
    did not answer this round; with any missing, a value from the others is not the workload's,
    so the scaler holds (a step on part of the pods could be undone when the rest answer)."""
    if metric is None or math.isnan(metric):
        why = (f"no sidecar answered GetStats ({missing} unreachable)" if missing
               else "no fresh value of the metric")
        fallback = {"scaleToMin": spec.min_replicas,
                    "scaleToMax": spec.max_replicas}.get(spec.on_missing_metrics)
        if fallback is not None:
            return Decision(fallback, "MissingMetrics",
                            f"{why}; onMissingMetrics {spec.on_missing_metrics}: "
                            f"{current} -> {fallback} replicas", scaling_active=False)
        clamped = min(max(current, spec.min_replicas), spec.max_replicas)
        if clamped != current:
            return Decision(clamped, "OutOfRange",
                            f"no metric; {current} replicas is outside [{spec.min_replicas}, "
                            f"{spec.max_replicas}]", scaling_active=False)
        return Decision(current, "MissingMetrics", f"{why}; holding {current} replicas",
                        scaling_active=False)
    if missing:
        return Decision(current, "MetricsIncomplete",
                        f"{missing} sidecar(s) did not answer GetStats; holding {current} "
                        f"replicas until every sidecar reports", scaling_active=False)

    if state.started is None:
        state.started, state.initial = now, current
    wanted = raw_recommendation(current, metric, spec.target, spec.tolerance)
    recommended = min(max(wanted, spec.min_replicas), spec.max_replicas)
    horizon = max(spec.scale_up.stabilization_window, spec.scale_down.stabilization_window)
    state.recommendations = [(t, r) for t, r in state.recommendations if now - t <= horizon]
    state.recommendations.append((now, recommended))

    def within(window: float) -> list[int]:
        return [r for t, r in state.recommendations if now - t <= window]

    desired, reason = current, "WithinTolerance"
    if recommended > current:
        # Scale up no further than the lowest recommendation of the up-window.
        seen = within(spec.scale_up.stabilization_window)
        if (state.resumed and state.initial
                and now - state.started < spec.scale_up.stabilization_window):
            seen.append(state.initial)
        desired = max(current, min(seen))
        desired = min(desired, current + spec.scale_up.max_step)
        reason = "ScaledUp" if desired > current else "StabilizingUp"
    elif recommended < current:
        # Scale down no further than the highest recommendation of the down-window (which,
        # while the scaler is younger than the window, includes the size it found).
        seen = within(spec.scale_down.stabilization_window)
        if now - state.started < spec.scale_down.stabilization_window and state.initial:
            seen.append(state.initial)
        desired = min(current, max(seen))
        desired = max(desired, current - spec.scale_down.max_step)
        reason = "ScaledDown" if desired < current else "StabilizingDown"
    desired = min(max(desired, spec.min_replicas), spec.max_replicas)
    if desired == current and wanted != current and recommended == current:
        reason = "AtLimit"
    message = (f"metric {metric:g} vs target {spec.target:g} per replica: "
               f"recommend {recommended}, {reason} {current} -> {desired}")
    return Decision(desired, reason, message)
