"""Where the agent is, how to authenticate, and the app-side view of the live config.

The client library must not import the agent package (apps stay light); the live config's
sections and defaults come from perfpilot_contract, which imports neither NumPy nor numba.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract.liveconfig import L1, Cache, Heartbeat, Kernels, Pools, read_proto
from perfpilot_contract.paths import default_socket_path

__all__ = ["L1", "AgentConfig", "Cache", "Heartbeat", "Kernels", "Pools", "default_target", "is_local",
           "normalize_target"]



def default_target() -> str:
    """PERFPILOT_ADDRESS (host:port), else PERFPILOT_SOCKET (injected by the operator), else the agent's default socket."""
    address = os.environ.get("PERFPILOT_ADDRESS")
    if address:
        return address
    socket = os.environ.get("PERFPILOT_SOCKET")
    if socket:
        return f"unix:{socket}"
    return f"unix:{default_socket_path()}"


def normalize_target(target: str | None) -> str:
    """Accept "unix:/path", "/path" (a socket) or "host:port"."""
    if not target:
        return default_target()
    if target.startswith("/"):
        return f"unix:{target}"
    return target


def is_local(target: str) -> bool:
    """Unix-socket targets share the host, so shared memory can be used."""
    return target.startswith("unix:")


@dataclass(frozen=True)
class AgentConfig:
    """The live config the app sees; `generation` is the PerfProfile generation it came from.

    The sections (and their defaults) are the contract's: perfpilot_contract.liveconfig.
    """

    generation: int = 0
    pools: Pools = field(default_factory=Pools)
    cache: Cache = field(default_factory=Cache)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    kernels: Kernels = field(default_factory=Kernels)

    @classmethod
    def from_proto(cls, generation: int, msg: pb.AgentConfig) -> AgentConfig:
        """Build from the wire message (GetConfig, or a CONFIG_APPLIED event)."""
        live = read_proto(msg)
        return cls(generation=generation, pools=live.pools, cache=live.cache,
                   heartbeat=live.heartbeat, kernels=live.kernels)
