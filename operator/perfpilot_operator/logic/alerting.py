"""Alert rules of a profile, evaluated like Prometheus does: inactive -> pending -> firing,
back to inactive (a 'resolved' transition) when the condition stops holding.

Pure: the caller keeps the AlertState per (profile, alert name) and reacts to transitions
(Events, the Alerting condition, metrics).
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


class Phase(str, enum.Enum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


class Transition(str, enum.Enum):
    NONE = "none"
    PENDING = "pending"      # condition became true, waiting out `for`
    FIRED = "fired"          # held for `for`: the alert is active
    RESOLVED = "resolved"    # was firing, condition no longer holds
    CLEARED = "cleared"      # was pending, condition stopped before `for` elapsed


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    op: str
    threshold: float
    for_seconds: float = 0.0
    severity: str = "warning"

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def describe(self, value: float) -> str:
        return f"{self.metric} = {value:g} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class AlertState:
    phase: Phase = Phase.INACTIVE
    since: float | None = None       # when the condition started holding
    value: float | None = None       # the last value seen


def evaluate(rule: AlertRule, state: AlertState, value: float | None,
             now: float) -> tuple[AlertState, Transition]:
    """Advance one alert by one observation. A missing value keeps a firing alert firing
    (Prometheus keeps the last state until the series is stale; staleness is the caller's)."""
    if value is None or math.isnan(value):
        return state, Transition.NONE
    if rule.holds(value):
        if state.phase is Phase.INACTIVE:
            if rule.for_seconds <= 0:
                return AlertState(Phase.FIRING, now, value), Transition.FIRED
            return AlertState(Phase.PENDING, now, value), Transition.PENDING
        since = state.since if state.since is not None else now
        if state.phase is Phase.PENDING and now - since >= rule.for_seconds:
            return AlertState(Phase.FIRING, since, value), Transition.FIRED
        return AlertState(state.phase, since, value), Transition.NONE
    if state.phase is Phase.FIRING:
        return AlertState(Phase.INACTIVE, None, value), Transition.RESOLVED
    if state.phase is Phase.PENDING:
        return AlertState(Phase.INACTIVE, None, value), Transition.CLEARED
    return AlertState(Phase.INACTIVE, None, value), Transition.NONE
