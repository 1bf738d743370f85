"""What the operator keeps about each profile between passes (typed, one object per profile).

Nothing here is the truth about the cluster: which config each sidecar runs is read back every
pass (logic/readback), status is rebuilt from what the sidecars answer (logic/status). This is
only what a pass needs to compare against the previous one: stats baselines, alert and scaler
state, open channels, the watchdog's rate limit, and the status this operator last wrote.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from perfpilot_operator.logic import stats
from perfpilot_operator.logic.alerting import AlertState
from perfpilot_operator.logic.scaling import ScalerState, parse_time


@dataclass
class MonitorState:
    """Stats, alerts and scaler state. After an operator restart (or a leader change) it is
    rebuilt by `resume` from the profile's status: the last step's time and the windows (see
    ScalerState.resumed); stats start from a baseline (stats.first_sight); alerts re-evaluate."""

    snapshots: dict[str, stats.Snapshot] = field(default_factory=dict)   # pod@ip -> cumulative
    last_look: float | None = None   # monotonic time of the previous GetStats round
    alerts: dict[str, AlertState] = field(default_factory=dict)
    scaler: ScalerState = field(default_factory=ScalerState)
    last_scale_eval: float = 0.0
    last_scale_time: str | None = None
    replicas: dict[str, Any] | None = None
    rule_synced: Any = None      # the PrometheusRule spec last written (None: never / deleted)


def resume(status: dict[str, Any]) -> MonitorState:
    """The state of a profile this operator has not observed yet, from its status: no step
    sooner than one interval after status.replicas.lastScaleTime, no window shortened."""
    replicas = status.get("replicas")
    if not isinstance(replicas, dict) or not replicas:
        return MonitorState()
    last = replicas.get("lastScaleTime")
    return MonitorState(scaler=ScalerState(resumed=True),
                        last_scale_eval=parse_time(last) or 0.0,
                        last_scale_time=last if isinstance(last, str) else None,
                        replicas=dict(replicas))


@dataclass
class ProfileState:
    """One profile's memory, shared by its spec handlers and the resync loop (kopf's per-object
    memo is not reachable from an operator-level task)."""

    # The spec handler and the resync loop run concurrently for one profile: one pass at a time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seen_generation: int = 0          # a pass over an older copy of the profile is skipped
    addresses: set[str] = field(default_factory=set)   # sidecar channels open (closed when gone)
    monitor: MonitorState | None = None                 # None until the first stats pass
    restarted: dict[str, float] = field(default_factory=dict)   # watchdog: Deployment -> time
    # (resourceVersion the status patch was made over, the status written): until the watch
    # delivers the patched object, the index still holds the older status.
    written: tuple[str, dict[str, Any]] | None = None

    def previous_status(self, resource_version: str, status: dict[str, Any]) -> dict[str, Any]:
        """The profile's status as of the last pass: the object's, or what this operator wrote
        over exactly that version of it (the watch has not delivered the patch yet)."""
        if self.written is not None and self.written[0] == resource_version:
            return {**status, **self.written[1]}
        self.written = None
        return status
