"""measure(): time a block on the app's hot path and hand the observation to a buffer.

The hot path is a perf_counter() pair and a deque append (atomic under the GIL); it never does
I/O and never waits. A flusher (thread or asyncio task, owned by the client) drains the buffer
into RecordTimings when `batch_size` observations are waiting or `batch_wait` has passed since the
first one, whichever comes first. When the agent is unreachable the buffer is bounded: the oldest
observations are dropped and counted in `dropped`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract.liveconfig import Pools

Observation = tuple[str, float, bool]


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
        self.on_first: Callable[[], None] = lambda: None
        self.on_full: Callable[[], None] = lambda: None

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
        if not n:
            return None
        return pb.RecordTimingsRequest(
            ops=[pb.OpObservations(op=op, durations_seconds=d, errors=e[0]) for op, (d, e) in by_op.items()]
        )


class Measure:
    """`with agent.measure("op"):` or `async with ...`: records duration and whether it raised."""

    __slots__ = ("_buffer", "_op", "_start", "error")

    def __init__(self, buffer: TimingBuffer, op: str) -> None:
        self._buffer = buffer
        self._op = op
        self._start = 0.0
        self.error = False

    def mark_error(self) -> None:
        """Count this observation as an error even though no exception escapes the block."""
        self.error = True

    def __enter__(self) -> Measure:
        self._start = time.perf_counter()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._buffer.add(self._op, time.perf_counter() - self._start, self.error or et is not None)

    async def __aenter__(self) -> Measure:
        return self.__enter__()

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(et, ev, tb)


class ThreadFlusher:
    """Background thread that ships a TimingBuffer to `send` (the sync client's RecordTimings)."""

    def __init__(self, buffer: TimingBuffer, send: Callable[[pb.RecordTimingsRequest], None]) -> None:
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
            self._wake.wait()
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
                self.send(req)
                self.buffer.sent += n
            except Exception:  # noqa: BLE001 - monitoring must never break the app
                self.buffer.failed += n

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is left and stop the thread."""
        self._closed = True
        self._wake.set()
        self._full.set()
        self.thread.join(timeout)
