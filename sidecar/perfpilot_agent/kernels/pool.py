"""KernelPool: a live-resizable process pool running JIT kernels, with shared-memory transport.

Design (details in docs/kernels.md):

* Workers are ``spawn``-ed processes (the parent runs gRPC threads, so ``fork`` is unsafe), each
  with a duplex pipe. numba is only ever imported inside workers (``worker.py`` -> ``jit.py``);
  importing this module does not import numba.
* Dispatch: one ``asyncio.Queue`` of jobs; each worker has a serving task that takes a job and
  runs the blocking send/recv round trip on a dedicated single-thread executor, so the event loop
  never blocks (large copies into shared memory also happen on that thread).
* Backpressure: ``submit``/``run`` raise ``PoolSaturated`` synchronously when queued + in-flight
  calls reach ``max_queue``; nothing ever waits for room.
* Worker death: the process sentinel is watched with ``loop.add_reader``; on death the in-flight
  call fails with ``WorkerDied`` at once, a warmed replacement is spawned and ``restarts`` counts
  it. Queued calls are not lost; they run on the remaining/replacement workers.
* Resize: growing spawns and warms new workers before they take work; shrinking marks workers
  as retiring (idle ones first); a retiring worker finishes its current call, then stops.
* Shared memory (staging.py): inputs above ``shm_threshold_bytes`` are copied into a segment the
  parent owns and sent as a descriptor; arrays made by ``shared_array()`` are sent as a descriptor
  without any copy; outputs above the threshold come back through a parent-allocated segment (read
  with pread: the parent never maps a staging segment, so a truncated one cannot SIGBUS it).
  The parent frees every segment of a call when the call ends, however it ends.

This module is the supervision: the pool's and workers' lifecycles (``PoolState``, ``Phase``),
dispatch, death and replacement; process.py starts and talks to one worker process.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import errors, registry, shm
from .cpus import available_cpus
from .errors import KernelError, PoolClosed, PoolSaturated, WorkerDied
from .process import Phase, Worker, describe_exit, roundtrip
from .process import start as start_process
from .staging import CallSegments, Staging, Transport

log = logging.getLogger(__name__)

EventHook = Callable[[str, dict[str, Any]], None]

_pool_ids = itertools.count(1)


@dataclass(frozen=True)
class PoolStats:
    workers: int  # live workers taking work (excludes retiring ones)
    busy: int  # workers running a call
    queue_depth: int  # accepted calls not yet running
    max_queue: int
    completed: int
    failed: int
    restarts: int  # dead workers replaced
    warm: tuple[str, ...]


class PoolState(enum.Enum):
    """The pool's lifecycle."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


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


class KernelPool:
    """A pool of kernel worker processes. All methods must be called from one event loop."""

    def __init__(
        self,
        *,
        workers: int = 2,
        max_queue: int = 1000,
        shm_threshold_bytes: int = 1 << 20,
        parallel: bool = True,
        on_event: EventHook | None = None,
        start_method: str = "spawn",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._target = int(workers)
        self._max_queue = int(max_queue)
        self.parallel = bool(parallel)
        self.on_event = on_event
        self._ctx = multiprocessing.get_context(start_method)
        self._id = next(_pool_ids)
        self.staging = Staging(f"{self._id}_", threshold=shm_threshold_bytes)  # pp_<pid>_<pool id>_...
        self._cpus = available_cpus()
        self._state = PoolState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Job] | None = None
        self._workers: list[Worker] = []  # every worker with a live serving task
        self._starting: set[Worker] = set()
        self._outstanding: set[asyncio.Future[Any]] = set()
        self._bg: set[asyncio.Task[Any]] = set()
        self._resize_lock: asyncio.Lock | None = None
        self._wids = itertools.count(1)
        self._warm: tuple[str, ...] = ()
        self._completed = 0
        self._failed = 0
        self._restarts = 0
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ public API

    async def start(self, warm: Sequence[str] = ()) -> None:
        """Spawn the workers; returns once every worker has compiled/loaded ``warm`` kernels."""
        if self._state is not PoolState.NEW:
            raise PoolClosed(f"pool cannot be started: it is {self._state.value}")
        names = tuple(dict.fromkeys(warm))
        for name in names:
            registry.spec(name)  # UnknownKernel for a bad name
        self._warm = names
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._resize_lock = asyncio.Lock()
        self._state = PoolState.STARTING
        results = await asyncio.gather(*(self._spawn() for _ in range(self._target)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures or self._state is not PoolState.STARTING:
            for r in results:
                if isinstance(r, Worker):
                    self._activate(r)
            self._state = PoolState.RUNNING
            await self.close()
            if failures:
                raise KernelError(f"kernel pool failed to start: {failures[0]}") from failures[0]
            raise PoolClosed("pool was closed while starting")
        self._state = PoolState.RUNNING
        for w in results:
            assert isinstance(w, Worker)
            self._activate(w)

    def submit(
        self,
        kernel: str,
        inputs: Mapping[str, np.ndarray],
        params: Mapping[str, float | int] | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Validate and enqueue a call; returns a future. Raises at once on bad input or a full queue."""
        params = dict(params or {})
        self._check_running()
        registry.validate_inputs(kernel, inputs, params, check_values=False)
        if "k" in params:
            params["k"] = int(params["k"])
        self._check_capacity()
        coerced = registry.coerce_inputs(kernel, inputs)
        return self._enqueue(Job(JobKind.RUN, kernel, coerced, params, self._new_future()))

    async def run(
        self,
        kernel: str,
        inputs: Mapping[str, np.ndarray],
        params: Mapping[str, float | int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``kernel`` on a worker and return its outputs (see registry.KERNELS)."""
        return await self.submit(kernel, inputs, params)

    async def resize(self, workers: int) -> None:
        """Change the number of workers live; no accepted call is lost."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._check_running()
        assert self._resize_lock is not None
        async with self._resize_lock:
            self._check_running()
            old = self._live_count()
            self._target = int(workers)
            pending = len(self._starting)
            if workers > old + pending:
                results = await asyncio.gather(
                    *(self._spawn() for _ in range(workers - old - pending)), return_exceptions=True
                )
                for r in results:
                    if isinstance(r, Worker):
                        if self._state is PoolState.RUNNING and self._live_count() < self._target:
                            self._activate(r)
                        else:
                            await self._reap(r)
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise KernelError(f"resize to {workers} workers failed: {failures[0]}") from failures[0]
            elif workers < old:
                live = [w for w in self._workers if w.live]
                live.sort(key=lambda w: w.current is not None)  # idle first
                retiring = live[: old - workers]
                for w in retiring:
                    self._retire(w)
                await asyncio.gather(*(self._wait_gone(w) for w in retiring))
            new = self._live_count()
        if new != old:
            self._emit("pool_resized", {"old": old, "new": new})

    def set_max_queue(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"max_queue must be >= 1, got {n}")
        self._max_queue = int(n)

    @property
    def shm_threshold_bytes(self) -> int:
        """Inputs and outputs larger than this travel through shared memory."""
        return self.staging.threshold

    @shm_threshold_bytes.setter
    def shm_threshold_bytes(self, n: int) -> None:
        self.staging.threshold = int(n)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    def stats(self) -> PoolStats:
        busy = sum(1 for w in self._workers if w.current is not None and w.phase is not Phase.DEAD)
        running = sum(
            1 for w in self._workers if w.current is not None and not w.current.future.done()
        )
        return PoolStats(
            workers=self._live_count(),
            busy=busy,
            queue_depth=max(0, len(self._outstanding) - running),
            max_queue=self._max_queue,
            completed=self._completed,
            failed=self._failed,
            restarts=self._restarts,
            warm=self._warm,
        )

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.live]

    def shared_array(self, shape: tuple[int, ...] | int, dtype: Any = np.float32) -> np.ndarray:
        """A writable ndarray allocated in shared memory: passing it to ``run`` copies nothing.

        Its segment is unlinked when the array and all its views are garbage-collected, by
        ``free_shared(arr)``, or at ``close()``.
        """
        return self.staging.shared.new(shape, dtype)

    def free_shared(self, arr: np.ndarray) -> None:
        self.staging.shared.free(arr)

    async def settle(self) -> None:
        """Wait until background replacements of dead workers have finished (for tests/tools)."""
        while self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)

    async def close(self, grace: float = 5.0) -> None:
        """Fail queued calls with PoolClosed, let running ones finish for up to ``grace`` seconds,
        stop every worker (killing stragglers) and free all shared memory."""
        if self._state in (PoolState.CLOSING, PoolState.CLOSED):
            await self._closed.wait()
            return
        if self._state is PoolState.NEW:
            self._state = PoolState.CLOSED
            self._closed.set()
            return
        self._state = PoolState.CLOSING
        self.staging.recycling = False  # segments of calls ending from now on are freed
        assert self._queue is not None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._fail(job, PoolClosed("kernel pool closed before the call ran"))
            self.staging.release(job.held)
        inflight = [w.current.future for w in self._workers if w.current is not None]
        if inflight:
            await asyncio.wait(inflight, timeout=grace)
        for t in list(self._bg):
            t.cancel()
        await asyncio.gather(*list(self._bg), return_exceptions=True)
        workers = list(self._workers) + list(self._starting)
        for w in workers:
            w.advance(Phase.RETIRING)
            if w.current is not None and w.process.is_alive():
                w.advance(Phase.STOPPING)
                w.process.kill()
            if w.task is not None and w.waiting:
                w.task.cancel()
        await asyncio.gather(*(self._wait_gone(w) for w in workers), return_exceptions=True)
        self.staging.close()
        self._state = PoolState.CLOSED
        self._closed.set()

    # ------------------------------------------------------------------ benchmarks' hooks

    def _submit_probe(self, arrays: Mapping[str, np.ndarray], via: Transport | str) -> asyncio.Future[Any]:
        """Ship arrays to a worker that touches every page and answers its byte count (no kernel)."""
        self._check_running()
        self._check_capacity()
        inputs = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return self._enqueue(Job(JobKind.PROBE, "", inputs, {}, self._new_future(), Transport(via)))

    # ------------------------------------------------------------------ internals

    def _check_running(self) -> None:
        if self._state is not PoolState.RUNNING:
            raise PoolClosed(f"kernel pool is {self._state.value}")

    def _check_capacity(self) -> None:
        n = len(self._outstanding)
        if n >= self._max_queue:
            self._emit("overload", {"queued": n, "max_queue": self._max_queue})
            raise PoolSaturated(
                f"kernel queue full: {n} calls queued or running (max_queue={self._max_queue})"
            )

    def _new_future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut = self._loop.create_future()
        self._outstanding.add(fut)
        fut.add_done_callback(self._outstanding.discard)
        return fut

    def _enqueue(self, job: Job) -> asyncio.Future[Any]:
        assert self._queue is not None
        self._queue.put_nowait(job)
        return job.future

    def _live_count(self) -> int:
        return sum(1 for w in self._workers if w.live)

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        hook = self.on_event
        if hook is None:
            return
        try:
            hook(kind, detail)
        except Exception:  # a broken hook must not break the pool
            log.exception("kernel pool event hook failed for %s", kind)

    def _variants(self) -> tuple[bool, ...]:
        return (False, True) if self.parallel else (False,)

    def _threads_per_call(self) -> int:
        if not self.parallel:
            return 1
        return max(1, self._cpus // max(1, self._live_count()))

    async def _spawn(self) -> Worker:
        assert self._loop is not None
        loop = self._loop
        wid = next(self._wids)
        w = start_process(self._ctx, wid, name=f"perfpilot-kernel-{self._id}.{wid}", cpus=self._cpus)
        proc = w.process
        w.forgot = len(self.staging.unlinked)
        self._starting.add(w)
        loop.add_reader(proc.sentinel, self._on_sentinel, w)
        try:
            reply = await loop.run_in_executor(
                w.executor, roundtrip, w.conn, ("warm", self._warm, self._variants())
            )
        except (EOFError, OSError) as e:
            self._starting.discard(w)
            w.advance(Phase.DEAD)
            proc.join(timeout=1.0)
            how = describe_exit(proc.exitcode)
            await self._reap(w)
            raise WorkerDied(f"kernel worker pid {w.pid} died during warm-up ({how})") from e
        except BaseException:
            self._starting.discard(w)
            await self._reap(w)
            raise
        self._starting.discard(w)
        if reply[0] != "warmed":
            await self._reap(w)
            raise KernelError(f"kernel worker pid {w.pid} failed to warm up: {reply[-1]}")
        return w

    def _activate(self, w: Worker) -> None:
        assert self._loop is not None
        w.advance(Phase.ACTIVE)
        self._workers.append(w)
        w.task = self._loop.create_task(self._lifecycle(w), name=f"perfpilot-kernel-worker-{w.wid}")

    def _retire(self, w: Worker) -> None:
        w.advance(Phase.RETIRING)
        if w.waiting and w.task is not None:
            w.task.cancel()  # idle: it is waiting on the queue, where cancelling loses nothing

    async def _lifecycle(self, w: Worker) -> None:
        try:
            await self._serve(w)
        except asyncio.CancelledError:
            pass
        finally:
            # shielded: a second cancel must not abandon the process half-stopped
            await asyncio.shield(self._reap(w))

    async def _wait_gone(self, w: Worker) -> None:
        """Wait for a worker's serving task to end and its process to be reaped.

        (A task cancelled before its first step never runs its ``finally``, hence the explicit reap.)
        """
        if w.task is not None:
            await asyncio.gather(w.task, return_exceptions=True)
        await self._reap(w)

    async def _serve(self, w: Worker) -> None:
        assert self._queue is not None and self._loop is not None
        queue, loop = self._queue, self._loop
        while w.live and self._state is PoolState.RUNNING:
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
                reply = await loop.run_in_executor(w.executor, self._call, w, job, self._threads_per_call())
            except (EOFError, OSError) as e:
                self._on_death(w, e)
                self.staging.release(job.held)
                w.current = None
                return
            except asyncio.CancelledError:
                # Only close() cancels a busy worker (after killing it); the call cannot complete.
                self._fail(job, PoolClosed("kernel pool closed while the call was running"))
                self.staging.release(job.held)
                w.current = None
                raise
            except Exception as e:  # e.g. an input that cannot be pickled
                self._fail(job, KernelError(f"{job.kernel}: could not send call to worker: {e}"))
                self.staging.release(job.held)
                w.current = None
                continue
            w.current = None
            self._finish(job, reply)

    def _call(self, w: Worker, job: Job, threads: int) -> Any:
        """Runs on the worker's own thread: stage big arrays in shm, send, wait for the answer."""
        staging = self.staging
        arrays = staging.inputs(job.inputs, job.transport, job.held)
        forget = staging.forget_since(w.forgot)
        w.forgot += len(forget)
        if job.kind is JobKind.PROBE:
            return roundtrip(w.conn, ("probe", arrays, forget))
        outs = staging.outputs(job.kernel, job.inputs, job.params, job.transport, job.held)
        parallel = self.parallel and threads > 1
        reply = roundtrip(w.conn, ("run", job.kernel, arrays, job.params, outs, threads, parallel, forget))
        if reply[0] != "ok" or not job.held.outputs:
            return reply
        try:
            return ("ok", staging.collect(dict(reply[1]), job.held))
        except shm.SegmentTruncated as e:
            return ("err", "SegmentLost", f"{job.kernel}: {e}")

    def _finish(self, job: Job, reply: Any) -> None:
        try:
            if reply[0] == "ok":
                result = dict(reply[1])
                if not job.future.done():
                    job.future.set_result(result)
                self._completed += 1
            else:
                cls = errors.BY_NAME.get(reply[1], KernelError)
                self._fail(job, cls(reply[2]))
        finally:
            self.staging.release(job.held)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
            self._failed += 1

    def _on_sentinel(self, w: Worker) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(w.process.sentinel)
            except (ValueError, OSError):
                pass
        if w.phase in (Phase.STOPPING, Phase.DEAD):
            return
        self._on_death(w, None)

    def _on_death(self, w: Worker, cause: BaseException | None) -> None:
        was = w.advance(Phase.DEAD)
        if was is Phase.DEAD:
            return
        w.process.join(timeout=1.0)  # the sentinel fired: the process is exiting/exited
        code = w.process.exitcode
        how = describe_exit(code)
        job = w.current
        if job is not None:
            if self._state is PoolState.RUNNING:
                exc: KernelError = WorkerDied(
                    f"kernel worker pid {w.pid} died ({how}) while running {job.kernel or job.kind.value}"
                )
            else:
                exc = PoolClosed("kernel pool closed while the call was running")
            self._fail(job, exc)
        if was is Phase.STARTING:  # still warming up: _spawn reports it
            return
        if was is Phase.STOPPING:
            return
        log.warning("kernel worker pid %s died (%s)", w.pid, how)
        self._emit(
            "worker_died",
            {"pid": w.pid, "exitcode": code, "how": how, "kernel": job.kernel if job else None},
        )
        if w.waiting and w.task is not None:
            w.task.cancel()
        if self._state is PoolState.RUNNING and was is Phase.ACTIVE:
            self._restarts += 1
            assert self._loop is not None
            t = self._loop.create_task(self._replace())
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)

    async def _replace(self) -> None:
        delay = 0.1
        for attempt in range(5):
            if self._state is not PoolState.RUNNING or self._live_count() + len(self._starting) >= self._target:
                return
            try:
                w = await self._spawn()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("replacing kernel worker failed (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if self._state is PoolState.RUNNING and self._live_count() < self._target:
                self._activate(w)
            else:
                await self._reap(w)
            return
        self._emit("worker_died", {"detail": "replacement failed 5 times; pool is degraded"})

    async def _reap(self, w: Worker) -> None:
        """Stop a worker's process (gracefully if it is alive and idle) and free its resources."""
        if w.reaping:
            await w.done.wait()
            return
        w.reaping = True
        try:
            assert self._loop is not None
            await w.stop(self._loop)
        finally:
            if w in self._workers:
                self._workers.remove(w)
            w.done.set()
