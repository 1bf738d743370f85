"""Where the agent is, how to authenticate, and the app-side view of the live config.

Self-contained on purpose: the client library must not import the agent package (apps stay light).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from google.protobuf.duration_pb2 import Duration
from perfpilot.v1 import agent_pb2 as pb

POD_SOCKET = "/var/run/perfpilot/agent.sock"


def default_target() -> str:
    """PERFPILOT_ADDRESS (host:port), else PERFPILOT_SOCKET (injected by the operator), else the agent's default socket."""
    address = os.environ.get("PERFPILOT_ADDRESS")
    if address:
        return address
    socket = os.environ.get("PERFPILOT_SOCKET")
    if socket:
        return f"unix:{socket}"
    if os.access(os.path.dirname(POD_SOCKET), os.W_OK) or os.path.exists(POD_SOCKET):
        return f"unix:{POD_SOCKET}"
    return f"unix:{os.path.join(tempfile.gettempdir(), f'perfpilot-{os.getuid()}', 'agent.sock')}"


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


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


@dataclass(frozen=True)
class Pools:
    """spec.pools as applied by the agent."""

    process_workers: int = 2
    thread_workers: int = 8
    max_queue: int = 1000
    batch_size: int = 100
    batch_wait: float = 0.01


@dataclass(frozen=True)
class Cache:
    """spec.cache as applied (ttl in seconds)."""

    ttl: float = 300.0
    max_entries: int = 10000


@dataclass(frozen=True)
class Heartbeat:
    """spec.heartbeat as applied (seconds)."""

    interval: float = 5.0
    timeout: float = 0.2


@dataclass(frozen=True)
class Kernels:
    """spec.kernels as applied."""

    warm: tuple[str, ...] = ()
    parallel: bool = True


@dataclass(frozen=True)
class AgentConfig:
    """The live config the app sees; `generation` is the PerfProfile generation it came from."""

    generation: int = 0
    pools: Pools = field(default_factory=Pools)
    cache: Cache = field(default_factory=Cache)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    kernels: Kernels = field(default_factory=Kernels)

    @classmethod
    def from_proto(cls, generation: int, msg: pb.AgentConfig) -> AgentConfig:
        """Build from the wire message (GetConfig, or a CONFIG_APPLIED event)."""
        p, c, h, k = msg.pools, msg.cache, msg.heartbeat, msg.kernels
        return cls(
            generation=generation,
            pools=Pools(p.process_workers, p.thread_workers, p.max_queue, p.batch_size, _seconds(p.batch_wait)),
            cache=Cache(_seconds(c.ttl), c.max_entries),
            heartbeat=Heartbeat(_seconds(h.interval), _seconds(h.timeout)),
            kernels=Kernels(tuple(k.warm), k.parallel),
        )
