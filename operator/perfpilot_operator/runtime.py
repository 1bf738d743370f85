"""Process-wide objects shared by the handlers (kept in kopf's memo)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from perfpilot_operator.clients.agents import AgentClients
from perfpilot_operator.settings import Settings
from perfpilot_operator.state import ProfileState


@dataclass
class Runtime:
    settings: Settings
    agents: AgentClients
    kube: Any = None                      # perfpilot_operator.clients.kube.Kube
    scale: Any = None                     # perfpilot_operator.clients.kube.ScaleClient
    native_sidecar: bool = True
    resize: bool = True                   # the API server offers pods/resize (1.33+)
    prometheus_rules: bool = False        # monitoring.coreos.com/v1 PrometheusRule is served
    prometheus_rules_checked: float | None = None   # monotonic time of the last discovery
    ca_bundle: bytes = b""
    leadership: Any = None                # perfpilot_operator.leader.Leadership
    shards: Any = None                    # logic.shards.Ownership with PERFPILOT_SHARDING, else None
    kopf_settings: Any = None             # kopf.OperatorSettings (for per-object loggers)
    # namespace -> [(labels, PodView)]: kopf's index of opted-in pods (a server-side filtered
    # watch) plus the coverage audit's finds (handlers/indexes.CoveredPods).
    pods: Any = None
    # kopf's index of ReplicaSets whose pods the API server refuses (handlers/indexes.py).
    refusals: Any = None
    # kopf's index (namespace, ReplicaSet) -> its controller (handlers/indexes.py).
    replicaset_owners: Any = None
    # (namespace, name) -> per-profile memory (stats baselines, alert and scaler state, the pass
    # lock), shared by the spec handlers and the resync loop: see handlers/profiles.profile_state.
    profiles: dict[tuple[str, str], ProfileState] = field(default_factory=dict)

    def acts_for(self, namespace: str, name: str) -> bool:
        """Whether this replica reconciles the profile now: its share when sharded
        (logic/shards.py), otherwise every profile while it leads."""
        if self.shards is not None:
            return bool(self.shards.acts((namespace, name), time.monotonic()))
        return self.leadership is not None and bool(self.leadership.is_leader)
