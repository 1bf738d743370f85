"""Dispatch: a pool's accepted calls, from admission through one worker's pipe to their futures.

Separate from supervision (supervision.py decides which workers exist and starts their serving
loops) and from staging (staging.py decides how arrays travel). This module holds the calls:

* Admission and backpressure: ``admit`` raises ``PoolSaturated`` synchronously when queued +
  in-flight calls reach ``max_queue``; nothing ever waits for room.
* The one ``asyncio.Queue`` of jobs and each worker's serving loop (``serve``): it takes a job and
  runs its blocking round trip (``call``: stage big arrays in shared memory, send, wait for the
  answer, copy big outputs back) on the worker's own thread, so the event loop never blocks.
* Settling: a job's future gets its result or error, the counters move, and its segments are
  released however the call ends.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import errors, shm
from .errors import KernelError, PoolClosed, PoolSaturated
from .process import Worker, roundtrip
from .staging import CallSegments, Staging, Transport

EventHook = Callable[[str, dict[str, Any]], None]
"""The pool's ``on_event``: called with "overload", "worker_died" or "pool_resized" and details."""


class JobKind(enum.Enum):
    """RUN a kernel, or PROBE: ship arrays to a worker that touches every page (benchmarks)."""

    RUN = "run"
    PROBE = "probe"


@dataclass(eq=False)
class Job:
    """One accepted call, from the queue to its result."""

    kind: JobKind
    kernel: str
    inputs: dict[str, np.ndarray]
    params: dict[str, Any]
    future: asyncio.Future[Any]
    transport: Transport = Transport.AUTO
    held: CallSegments = field(default_factory=CallSegments)


class Workers(Protocol):
    """What a serving loop needs from supervision (supervision.Supervisor)."""

    parallel: bool

    def serving(self, w: Worker) -> bool: ...
    def threads_per_call(self) -> int: ...
    def on_death(self, w: Worker, cause: BaseException | None) -> None: ...


class Dispatcher:
    """The bounded queue of a pool's calls and their outcomes. Event-loop methods, except ``call``."""

    def __init__(self, staging: Staging, *, max_queue: int, emit: EventHook) -> None:
        self.staging = staging
        self.max_queue = max_queue
        self.completed = 0
        self.failed = 0
        self._emit = emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Job] | None = None
        self._outstanding: set[asyncio.Future[Any]] = set()

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the pool's event loop (at start)."""
        self._loop = loop
        self._queue = asyncio.Queue()

    @property
    def queue(self) -> asyncio.Queue[Job]:
        assert self._queue is not None
        return self._queue

    @property
    def outstanding(self) -> int:
        """Accepted calls not yet settled (queued or running)."""
        return len(self._outstanding)

    def admit(self) -> None:
        n = len(self._outstanding)
        if n >= self.max_queue:
            self._emit("overload", {"queued": n, "max_queue": self.max_queue})
            raise PoolSaturated(
                f"kernel queue full: {n} calls queued or running (max_queue={self.max_queue})"
            )

    def new_future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut = self._loop.create_future()
        self._outstanding.add(fut)
        fut.add_done_callback(self._outstanding.discard)
        return fut

    def enqueue(self, job: Job) -> asyncio.Future[Any]:
        self.queue.put_nowait(job)
        return job.future

    def drain(self) -> None:
        """The pool is closing: fail every queued call (running ones are left to finish)."""
        queue = self.queue
        while not queue.empty():
            job = queue.get_nowait()
            self.fail(job, PoolClosed("kernel pool closed before the call ran"))
            self.staging.release(job.held)

    async def serve(self, w: Worker, workers: Workers) -> None:
        """``w``'s serving loop: one call at a time until it retires, dies or the pool closes."""
        assert self._loop is not None
        queue, loop = self.queue, self._loop
        while workers.serving(w):
            w.waiting = True
            try:
                job = await queue.get()
            finally:
                w.waiting = False
            if job.future.done():  # cancelled by its caller while queued
                self.staging.release(job.held)
                continue
            w.current = job
            try:
                reply = await loop.run_in_executor(
                    w.executor, self.call, w, job, workers.threads_per_call(), workers.parallel
                )
            except (EOFError, OSError) as e:
                workers.on_death(w, e)
                self.staging.release(job.held)
                w.current = None
                return
            except asyncio.CancelledError:
                # Only close() cancels a busy worker (after killing it); the call cannot complete.
                self.fail(job, PoolClosed("kernel pool closed while the call was running"))
                self.staging.release(job.held)
                w.current = None
                raise
            except Exception as e:  # e.g. an input that cannot be pickled
                self.fail(job, KernelError(f"{job.kernel}: could not send call to worker: {e}"))
                self.staging.release(job.held)
                w.current = None
                continue
            w.current = None
            self.finish(job, reply)

    def call(self, w: Worker, job: Job, threads: int, parallel: bool) -> Any:
        """Runs on the worker's own thread: stage big arrays in shm, send, wait for the answer."""
        staging = self.staging
        outs: dict[str, shm.ShmRef] = {}
        try:  # an OSError here is the parent's (e.g. /dev/shm full), not the worker's pipe
            arrays = staging.inputs(job.inputs, job.transport, job.held)
            if job.kind is JobKind.RUN:
                outs = staging.outputs(job.kernel, job.inputs, job.params, job.transport, job.held)
        except OSError as e:
            return ("err", "StagingFailed",
                    f"{job.kernel or job.kind.value}: shared memory for the call could not be allocated: {e}")
        forget = staging.forget_since(w.forgot)
        w.forgot += len(forget)
        if job.kind is JobKind.PROBE:
            return roundtrip(w.conn, ("probe", arrays, forget))
        parallel = parallel and threads > 1
        reply = roundtrip(w.conn, ("run", job.kernel, arrays, job.params, outs, threads, parallel, forget))
        if reply[0] != "ok" or not job.held.outputs:
            return reply
        try:
            return ("ok", staging.collect(dict(reply[1]), job.held))
        except shm.SegmentTruncated as e:
            return ("err", "SegmentLost", f"{job.kernel}: {e}")

    def finish(self, job: Job, reply: Any) -> None:
        """The worker answered: settle the call with its result or its error, release its segments."""
        try:
            if reply[0] == "ok":
                result = dict(reply[1])
                if not job.future.done():
                    job.future.set_result(result)
                self.completed += 1
            else:
                cls = errors.BY_NAME.get(reply[1], KernelError)
                self.fail(job, cls(reply[2]))
        finally:
            self.staging.release(job.held)

    def fail(self, job: Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
            self.failed += 1
