"""What the sync and async clients share: target, options, timings buffer, live-config state.

No I/O here: AgentClient (threads) and AsyncAgentClient (asyncio) do the calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client.channel import channel_options
from perfpilot_client.config import AgentConfig, Pools, is_local, normalize_target
from perfpilot_client.errors import SidecarUnavailable
from perfpilot_client.timings import Measure, TimingBuffer, default_buffer, set_default_buffer
from perfpilot_client.shm import SegmentPool

log = logging.getLogger("perfpilot_client")
ConfigCallback = Callable[[AgentConfig], Any]
DEFAULT_SHM_THRESHOLD = 1 << 20
KERNELS_EXTRA = "perfpilot[client-kernels]"
# wait_ready polls Heartbeat while the sidecar warms its kernels: from 50 ms up to 1 s apart.
READY_POLL_INITIAL = 0.05
READY_POLL_MAX = 1.0


def require_numpy() -> None:
    """Kernels need NumPy, which the plain client install does not bring: say which extra does."""
    try:
        import numpy  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"run_kernel needs NumPy, which `pip install \"perfpilot[client]\"` does not install; "
            f"install `pip install \"{KERNELS_EXTRA}\"`"
        ) from exc


def rpc_name(request: object) -> str:
    """The RPC a request message belongs to (CacheGetRequest -> CacheGet), for error messages."""
    return type(request).__name__.removesuffix("Request")


class ReadyWait:
    """The bookkeeping of one wait_ready: deadline, poll interval, what was seen last (the sync and
    async clients make the calls)."""

    def __init__(self, target: str, timeout: float, warm: bool) -> None:
        self.target, self.timeout, self.warm = target, timeout, warm
        self.deadline = time.monotonic() + timeout
        self.delay = 0.0
        self.last: pb.HeartbeatResponse | None = None
        self.cause: Exception | None = None

    def pause(self) -> float:
        """Seconds to wait before the next attempt; SidecarUnavailable once the time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.error()
        pause, self.delay = min(self.delay, left), min(max(self.delay * 2, READY_POLL_INITIAL), READY_POLL_MAX)
        return pause

    def left(self) -> float:
        """The time left, as the next call's deadline."""
        return max(self.deadline - time.monotonic(), 0.001)

    def ready(self, resp: pb.HeartbeatResponse) -> bool:
        """Ready means answering; with warm=True also READY (warm kernels compiled)."""
        self.last = resp
        return resp.state == pb.AGENT_STATE_READY or (not self.warm and resp.state == pb.AGENT_STATE_STARTING)

    def error(self) -> SidecarUnavailable:
        """What wait_ready raises when its time is up, saying what it saw last."""
        if self.last is not None:
            state = pb.AgentState.Name(self.last.state).removeprefix("AGENT_STATE_")
            why = f"it answers but is {state}" + (" (warm kernels still compiling)" if state == "STARTING" else "")
        else:
            why = f"no answer ({self.cause})" if self.cause is not None else "no answer"
        return SidecarUnavailable(f"sidecar at {self.target} not ready after {self.timeout:g}s: {why}")


class ClientBase:
    """Target handling, the timings buffer and the live-config state of one client."""

    def __init__(
        self,
        target: str | None,
        *,
        timeout: float,
        shm_threshold: int | None,
        batch_size: int | None,
        batch_wait: float | None,
        max_message_bytes: int,
    ) -> None:
        self.target = normalize_target(target)
        # Per-call metadata: none. The app talks to its sidecar over the Unix socket, which needs
        # no credential; the TCP control port is the operator's (mutual TLS).
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.timeout = timeout
        if shm_threshold is None and is_local(self.target):
            shm_threshold = DEFAULT_SHM_THRESHOLD
        self.shm_threshold = shm_threshold if is_local(self.target) else None
        defaults = Pools()  # the contract's defaults until the live config arrives
        self.timings = TimingBuffer(batch_size=batch_size or defaults.batch_size,
                                    batch_wait=defaults.batch_wait if batch_wait is None else batch_wait)
        self.segment_pool = SegmentPool()
        self._batch_fixed = batch_size is not None, batch_wait is not None
        self.channel_options = channel_options(max_message_bytes)
        self._config: AgentConfig | None = None
        self._callbacks: list[ConfigCallback] = []
        self._lock = threading.Lock()

    def set_default(self) -> None:
        """Make the module-level `perfpilot_client.measure("op")` record into this client."""
        set_default_buffer(self.timings)

    def _set_default_if_none(self) -> None:
        if default_buffer() is None:
            self.set_default()

    def _forget_default(self) -> None:
        if default_buffer() is self.timings:
            set_default_buffer(None)

    def measure(self, op: str) -> Measure:
        """`with agent.measure("op"):`, `async with ...` or `@agent.measure("op")` on a function."""
        return Measure(self.timings, op)

    def _adopt(self, generation: int, msg: pb.AgentConfig) -> AgentConfig | None:
        """Store a config if newer; returns it when it changed (callbacks are then due)."""
        cfg = AgentConfig.from_proto(generation, msg)
        with self._lock:
            old = self._config
            if old is not None and generation < old.generation:
                return None
            self._config = cfg
        if not self._batch_fixed[0]:
            self.timings.batch_size = cfg.pools.batch_size
        if not self._batch_fixed[1]:
            self.timings.batch_wait = cfg.pools.batch_wait
        return cfg if old is not None and old != cfg else None  # the first load is not a change
