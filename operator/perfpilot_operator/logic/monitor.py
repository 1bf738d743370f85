"""A profile's alerts and autoscaling, read from its spec and advanced by one observation.

Pure: the operator keeps the returned states between passes (in the object's memo) and turns
transitions into Events, conditions, status and metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from perfpilot_operator.logic.alerting import AlertRule, AlertState, Phase, Transition, evaluate
from perfpilot_operator.logic.scaling import AutoscalingSpec, Policy
from perfpilot_operator.logic.units import parse_duration, parse_quantity

DEFAULT_AUTOSCALING_INTERVAL = 15.0   # the CRD's default for spec.autoscaling.interval


def alert_rules(spec: dict[str, Any]) -> list[AlertRule]:
    return [AlertRule(name=a["name"], metric=a["metric"], op=a["op"],
                      threshold=float(a["threshold"]),
                      for_seconds=parse_duration(a.get("for", "0s")),
                      severity=a.get("severity", "warning"))
            for a in spec.get("alerts") or []]


@dataclass(frozen=True)
class Autoscaling:
    metric: str
    interval: float
    spec: AutoscalingSpec
    target_ref: dict[str, Any]


def autoscaling(spec: dict[str, Any]) -> Autoscaling | None:
    """The parsed spec.autoscaling; None when off (absent, or no spec.target to scale)."""
    a = spec.get("autoscaling")
    if not a or not spec.get("target"):
        return None
    up, down = a.get("scaleUp") or {}, a.get("scaleDown") or {}
    return Autoscaling(
        metric=a["metric"],
        interval=parse_duration(a.get("interval", "15s")),
        spec=AutoscalingSpec(
            min_replicas=int(a.get("minReplicas", 1)),
            max_replicas=int(a["maxReplicas"]),
            target=float(a["target"]),
            tolerance=float(a.get("tolerance", 0.1)),
            scale_up=Policy(parse_duration(up.get("stabilizationWindow", "0s")),
                            int(up.get("maxStep", 4))),
            scale_down=Policy(parse_duration(down.get("stabilizationWindow", "5m")),
                              int(down.get("maxStep", 1))),
            on_missing_metrics=a.get("onMissingMetrics", "hold"),
        ),
        target_ref=dict(spec["target"]),
    )


def sidecar_memory_limit(spec: dict[str, Any]) -> float | None:
    """Bytes of the sidecar's memory limit: what memory_utilization is a fraction of."""
    limit = ((spec.get("resources") or {}).get("sidecar") or {}).get("limits", {}).get("memory")
    return float(parse_quantity(limit)) if limit else None


@dataclass(frozen=True)
class AlertChange:
    rule: AlertRule
    transition: Transition
    value: float | None


def advance_alerts(rules: list[AlertRule], states: dict[str, AlertState],
                   metrics: dict[str, float], now: float
                   ) -> tuple[dict[str, AlertState], list[AlertChange]]:
    """Every rule advanced by this pass's metric values; states of removed rules are dropped
    (a removed firing alert resolves)."""
    new: dict[str, AlertState] = {}
    changes: list[AlertChange] = []
    for rule in rules:
        value = metrics.get(rule.metric, math.nan)
        state, transition = evaluate(rule, states.get(rule.name, AlertState()), value, now)
        new[rule.name] = state
        if transition is not Transition.NONE:
            changes.append(AlertChange(rule, transition, None if math.isnan(value) else value))
    return new, changes


def active_alerts(rules: list[AlertRule], states: dict[str, AlertState],
                  to_iso: Any) -> list[dict[str, Any]]:
    """status.activeAlerts: pending and firing alerts, in spec order."""
    out = []
    for rule in rules:
        st = states.get(rule.name)
        if st is None or st.phase is Phase.INACTIVE:
            continue
        entry: dict[str, Any] = {"name": rule.name, "state": st.phase.value,
                                 "severity": rule.severity}
        if st.since is not None:
            entry["since"] = to_iso(st.since)
        if st.value is not None:
            entry["value"] = round(st.value, 6)
            entry["message"] = rule.describe(st.value)
        out.append(entry)
    return out
