"""What the sync and async clients share: target, options, timings buffer, live-config state.

No I/O here: AgentClient (threads) and AsyncAgentClient (asyncio) do the calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client.channel import channel_options
from perfpilot_client.config import AgentConfig, Pools, is_local, normalize_target
from perfpilot_client.errors import SidecarUnavailable
from perfpilot_client.nearcache import KEEPALIVE_SECONDS, NearCache, deps_from_proto
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


def watch_request(cache_events: bool) -> pb.WatchEventsRequest:
    """The watcher's subscription: config changes, and cache changes while L1 is on (a client with
    L1 off is not sent every write of every process), with keepalives."""
    types = [pb.EVENT_TYPE_CONFIG_APPLIED] + ([pb.EVENT_TYPE_CACHE_CHANGED] if cache_events else [])
    req = pb.WatchEventsRequest(types=types)
    req.keepalive.FromNanoseconds(int(KEEPALIVE_SECONDS * 1e9))
    return req


def put_request(key: str, value: bytes, ttl: float | None, depends_on: Sequence[str],
                depends_on_prefixes: Sequence[str], tags: Sequence[str]) -> pb.CachePutRequest:
    """A CachePut (ttl in seconds; None = the profile's cache.ttl)."""
    req = pb.CachePutRequest(key=key, value=value, dependencies=pb.CacheDependencies(
        keys=depends_on, prefixes=depends_on_prefixes, tags=tags))
    if ttl is not None:
        req.ttl.FromNanoseconds(int(ttl * 1e9))
    return req


def invalidate_request(prefix: str, keys: Sequence[str], tags: Sequence[str]) -> pb.CacheInvalidateRequest:
    """A CacheInvalidate: by prefix ("" = all, unless keys or tags are given), exact keys, tags."""
    return pb.CacheInvalidateRequest(prefix=prefix, keys=keys, tags=tags)


def invalidated_prefixes(req: pb.CacheInvalidateRequest) -> tuple[str, ...]:
    """The prefixes a CacheInvalidate removes (the sidecar's rule: "" is everything only alone)."""
    return (req.prefix,) if req.prefix or not (req.keys or req.tags) else ()


def get_ttl_left(resp: pb.CacheGetResponse) -> float | None:
    """Seconds the L2 entry has left (None when the sidecar did not say)."""
    return resp.ttl_remaining.ToNanoseconds() / 1e9 if resp.HasField("ttl_remaining") else None


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
        near_cache: bool = True,
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
        self.l1 = NearCache(allowed=near_cache)
        self.timings.extra = self.l1.take_stats

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

    # -- L1 around the cache calls (the sync and async clients make the calls) --------------------

    def _l1_filled_from_get(self, key: str, resp: pb.CacheGetResponse, ticket: tuple[int, int]) -> bytes | None:
        """What CacheGet answered; an L1 copy is kept when allowed (see NearCache.fill)."""
        if not resp.found:
            return None
        if self.l1.settings.enabled:
            self.l1.fill(key, resp.value, ttl_left=get_ttl_left(resp), deps=deps_from_proto(resp.dependencies),
                         sequence=resp.sequence, ticket=ticket)
        return resp.value

    def _l1_after_put(self, req: pb.CachePutRequest, resp: pb.CachePutResponse, ticket: tuple[int, int]) -> None:
        """Write-through: this client's L1 keeps what it wrote (read-your-writes), unless L2 does not."""
        if not self.l1.settings.enabled:
            return
        cfg = self._config
        if cfg is not None and cfg.cache.max_entries == 0:
            self.l1.discard(keys=(req.key,))
            return
        ttl = req.ttl.ToNanoseconds() / 1e9 if req.HasField("ttl") else cfg.cache.ttl if cfg is not None else None
        self.l1.fill(req.key, req.value, ttl_left=ttl, deps=deps_from_proto(req.dependencies),
                     sequence=resp.sequence, ticket=ticket)

    def _wants_cache_events(self) -> bool:
        """For the next subscription: as the config says, or (config not read yet) whether L1 may be
        used at all, so a profile with L1 on needs no second subscription at start."""
        return self.l1.wanted() if self._config is not None else self.l1.allowed

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
        self.l1.configure(cfg.cache)
        return cfg if old is not None and old != cfg else None  # the first load is not a change
