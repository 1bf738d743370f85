"""From a PerfProfile spec to the sidecar's live config (the Configure request).

Pure, and not ours: the conversion (and the effective defaults of batchSize / maxQueue and of the
heartbeat pair) is the contract's, the same code the sidecar runs on PERFPILOT_CONFIG at start,
so a new pod and a Configured pod end up with the same config.
"""

from __future__ import annotations

from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract.liveconfig import agent_config as _agent_config
from perfpilot_contract.liveconfig import configure_request, live_sections

__all__ = ["agent_config", "configure_request"]


def agent_config(spec: dict[str, Any]) -> pb.AgentConfig:
    """The AgentConfig for a profile spec; absent sections stay absent (the agent keeps its own)."""
    return _agent_config(live_sections(spec))
