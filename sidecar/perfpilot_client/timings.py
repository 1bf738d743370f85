"""measure(): time a block on the app's hot path and hand the observation to a buffer.

The hot path is a perf_counter() pair and a deque append (atomic under the GIL); it never does
I/O and never waits. A flusher (thread or asyncio task, owned by the client) drains the buffer
into RecordTimings when `batch_size` observations are waiting or `batch_wait` has passed since the
first one, whichever comes first. When the agent is unreachable the buffer is bounded: the oldest
observations are dropped and counted in `dropped`.

`measure(op)` objects are also decorators (plain and async functions). The module-level
`measure("op")` records into the default client (set_default_buffer(), done by `connect()`), looked
up when the block ends, so modules can decorate functions at import time, before the app connects.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, cast

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract.liveconfig import Pools

log = logging.getLogger(__name__)
Observation = tuple[str, float, bool]
P = ParamSpec("P")
R = TypeVar("R")
# Refused op names remembered for log-once (the sidecar caps distinct names; this bounds our memory).
MAX_REFUSED_NAMES = 1000
STATS_INTERVAL = 1.0
"""The flusher also wakes this often to send the L1 counters (`extra`) when they changed."""


class TimingBuffer:
    """Thread-safe bounded buffer of (op, seconds, error) with flush signalling."""

    def __init__(self, *, batch_size: int = Pools.batch_size, batch_wait: float = Pools.batch_wait,
                 max_buffer: int = 100_000) -> None:
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.items: deque[Observation] = deque(maxlen=max_buffer)
        self.dropped = 0
        self.sent = 0
        self.failed = 0
        self.refused = 0
        self.refused_ops: set[str] = set()
        self.on_first: Callable[[], None] = lambda: None
        self.on_full: Callable[[], None] = lambda: None
        self.extra: Callable[[], pb.ClientCacheStats | None] = lambda: None
        """The client's L1 counters since the last request, sent along (RecordTimingsRequest.cache)."""

    def add(self, op: str, seconds: float, error: bool) -> None:
        """Record one observation (hot path: no locks held across I/O, never blocks)."""
        items = self.items
        if len(items) == items.maxlen:
            self.dropped += 1
        items.append((op, seconds, error))
        n = len(items)
        if n == 1:
            self.on_first()
        if n == self.batch_size:
            self.on_full()

    def drain(self, limit: int = 100_000) -> pb.RecordTimingsRequest | None:
        """Pop up to `limit` observations grouped by op into one request (None when empty)."""
        items = self.items
        cache = self.extra()
        by_op: dict[str, tuple[list[float], list[int]]] = {}
        n = 0
        while items and n < limit:
            try:
                op, seconds, error = items.popleft()
            except IndexError:
                break
            entry = by_op.get(op)
            if entry is None:
                entry = by_op[op] = ([], [0])
            entry[0].append(seconds)
            entry[1][0] += error
            n += 1
        if not n and cache is None:
            return None
        return pb.RecordTimingsRequest(
            ops=[pb.OpObservations(op=op, durations_seconds=d, errors=e[0]) for op, (d, e) in by_op.items()],
            cache=cache,
        )


    def acknowledge(self, resp: pb.RecordTimingsResponse) -> None:
        """Count a RecordTimings answer; op names refused by the sidecar's cap are logged once each."""
        self.sent += resp.accepted
        self.refused += resp.refused
        for name in resp.refused_ops:
            if name in self.refused_ops or len(self.refused_ops) >= MAX_REFUSED_NAMES:
                continue
            self.refused_ops.add(name)
            log.warning("perfpilot: the sidecar refused op name %r: its op-name limit is reached, so this op's "
                        "timings are not recorded (known ops still are). Use a bounded set of op names.", name)


_default: list[TimingBuffer] = []
_unrecorded = [0]


def set_default_buffer(buffer: TimingBuffer | None) -> None:
    """Where the module-level measure() records (the default client's buffer; None clears it)."""
    _default[:] = [] if buffer is None else [buffer]


def default_buffer() -> TimingBuffer | None:
    """The default client's buffer, if one is set."""
    return _default[0] if _default else None


def record(buffer: TimingBuffer | None, op: str, seconds: float, error: bool) -> None:
    """One observation into `buffer`, or the default client's when None (warned once if none)."""
    if buffer is None:
        buffer = _default[0] if _default else None
        if buffer is None:
            _unrecorded[0] += 1
            if _unrecorded[0] == 1:
                log.warning("perfpilot: measure(%r) ran before any client was connected (AgentClient.connect() or "
                            "agent.set_default()); such timings are not recorded", op)
            return
    buffer.add(op, seconds, error)


class Measure:
    """`with agent.measure("op"):`, `async with ...` or `@agent.measure("op")`: records the duration
    and whether it raised. A buffer of None means the default client's, looked up at the end."""

    __slots__ = ("_buffer", "_op", "_start", "error")

    def __init__(self, buffer: TimingBuffer | None, op: str) -> None:
        self._buffer = buffer
        self._op = op
        self._start = 0.0
        self.error = False

    def mark_error(self) -> None:
        """Count this observation as an error even though no exception escapes the block."""
        self.error = True

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        record(self._buffer, self._op, time.perf_counter() - self._start, self.error or et is not None)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(et, ev, tb)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorator form: every call of `fn` (a plain or an async function) is one observation."""
        buffer, op = self._buffer, self._op
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                with Measure(buffer, op):
                    return await fn(*args, **kwargs)

            return cast(Callable[P, R], timed_async)

        @functools.wraps(fn)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            with Measure(buffer, op):
                return fn(*args, **kwargs)

        return timed


def measure(op: str) -> Measure:
    """`@measure("op")` / `with measure("op"):` on the default client (the first one connected)."""
    return Measure(None, op)


class ThreadFlusher:
    """Background thread that ships a TimingBuffer to `send` (the sync client's RecordTimings)."""

    def __init__(self, buffer: TimingBuffer, send: Callable[[pb.RecordTimingsRequest], pb.RecordTimingsResponse]) -> None:
        self.buffer = buffer
        self.send = send
        self._wake = threading.Event()
        self._full = threading.Event()
        self._closed = False
        buffer.on_first = self._wake.set
        buffer.on_full = self._full.set
        self.thread = threading.Thread(target=self._run, name="perfpilot-timings", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(STATS_INTERVAL)  # a timeout flushes only the L1 counters, if they changed
            self._wake.clear()
            if not self._closed and len(self.buffer.items) < self.buffer.batch_size:
                self._full.wait(self.buffer.batch_wait)
            self._full.clear()
            self.flush()
            if self._closed:
                return
            if self.buffer.items:
                self._wake.set()

    def flush(self) -> None:
        """Send everything buffered now (errors are counted, the batch is dropped)."""
        while True:
            req = self.buffer.drain()
            if req is None:
                return
            n = sum(len(o.durations_seconds) for o in req.ops)
            try:
                self.buffer.acknowledge(self.send(req))
            except Exception:  # noqa: BLE001 - monitoring must never break the app
                self.buffer.failed += n

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is left and stop the thread."""
        self._closed = True
        self._wake.set()
        self._full.set()
        self.thread.join(timeout)
