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
* Shared memory: inputs above ``shm_threshold_bytes`` are copied into a segment the parent owns
  and sent as a descriptor; arrays made by ``shared_array()`` are sent as a descriptor without any
  copy; outputs above the threshold come back through a parent-allocated segment (read with
  pread: the parent never maps a staging segment, so a truncated one cannot SIGBUS it).
  The parent frees every segment of a call when the call ends, however it ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing import spawn as mp_spawn
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from . import errors, registry, shm, worker
from .cpus import available_cpus
from .errors import KernelError, PoolClosed, PoolSaturated, WorkerDied

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


class _Job:
    __slots__ = ("op", "kernel", "inputs", "params", "future", "segments", "outs", "via")

    def __init__(
        self,
        op: str,
        kernel: str,
        inputs: dict[str, np.ndarray],
        params: dict[str, Any],
        future: asyncio.Future[Any],
        via: str = "auto",
    ) -> None:
        self.op = op
        self.kernel = kernel
        self.inputs = inputs
        self.params = params
        self.future = future
        self.segments: list[shm.Segment] = []
        self.outs: dict[str, tuple[shm.Segment, tuple[int, ...], np.dtype]] = {}
        self.via = via  # "auto" | "shm" | "pickle" (the latter two for benchmarks)


class _Worker:
    def __init__(self, wid: int, process: Any, conn: Any) -> None:
        self.wid = wid
        self.process = process
        self.pid: int = process.pid
        self.conn = conn
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"perfpilot-kernel-{wid}")
        self.task: asyncio.Task[None] | None = None
        self.current: _Job | None = None
        self.active = False  # taking work
        self.retiring = False
        self.dead = False
        self.stopping = False
        self.reaping = False
        self.waiting = False  # blocked in queue.get(): the only state in which we cancel its task
        self.done = asyncio.Event()
        self.forgot = 0  # how much of the pool's unlinked-names list this worker has been told


_spawn_lock = threading.Lock()


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Spawn workers without re-importing the parent's ``__main__`` in them.

    multiprocessing's spawn re-runs the parent's main module in every child (so a script without
    an ``if __name__ == "__main__"`` guard would recurse, and the sidecar's workers would import
    the whole gRPC server). Workers only need ``perfpilot_agent.kernels.worker``, so the
    preparation data is stripped of the main-module entries while our processes start.
    """
    original = mp_spawn.get_preparation_data

    def prep(name: str) -> dict[str, Any]:
        d = original(name)
        d.pop("init_main_from_name", None)
        d.pop("init_main_from_path", None)
        return d

    with _spawn_lock:
        mp_spawn.get_preparation_data = prep
        try:
            yield
        finally:
            mp_spawn.get_preparation_data = original


def _roundtrip(conn: Any, msg: Any) -> Any:
    conn.send(msg)
    return conn.recv()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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
        self.shm_threshold_bytes = int(shm_threshold_bytes)
        self.parallel = bool(parallel)
        self.on_event = on_event
        self._ctx = multiprocessing.get_context(start_method)
        self._id = next(_pool_ids)
        self._tag = f"{self._id}_"  # segment names: pp_<pid>_<pool id>_...
        self._prefix = f"{shm.PREFIX}{os.getpid()}_{self._tag}"
        self._cpus = available_cpus()
        self._state = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._workers: list[_Worker] = []  # every worker with a live serving task
        self._starting: set[_Worker] = set()
        self._outstanding: set[asyncio.Future[Any]] = set()
        self._bg: set[asyncio.Task[Any]] = set()
        self._resize_lock: asyncio.Lock | None = None
        self._wids = itertools.count(1)
        # Recycled per-call input segments: fresh tmpfs pages cost a fault + zeroing each (~4 ms per
        # 10 MB); reusing already-faulted segments leaves just the memcpy. Bounded by bytes.
        self._spare: list[shm.Segment] = []
        self._spare_lock = threading.Lock()
        self.spare_segment_bytes = 512 << 20
        self._unlinked: list[str] = []  # long-lived segments unlinked so far (workers drop mappings)
        self._shared = shm.SharedArrays(tag=self._tag + "sh", on_unlink=self._unlinked.append)
        self._warm: tuple[str, ...] = ()
        self._completed = 0
        self._failed = 0
        self._restarts = 0
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ public API

    async def start(self, warm: Sequence[str] = ()) -> None:
        """Spawn the workers; returns once every worker has compiled/loaded ``warm`` kernels."""
        if self._state != "new":
            raise PoolClosed(f"pool cannot be started: it is {self._state}")
        names = tuple(dict.fromkeys(warm))
        for name in names:
            registry.spec(name)  # UnknownKernel for a bad name
        self._warm = names
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._resize_lock = asyncio.Lock()
        self._state = "starting"
        results = await asyncio.gather(*(self._spawn() for _ in range(self._target)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures or self._state != "starting":
            for r in results:
                if isinstance(r, _Worker):
                    self._activate(r)
            self._state = "running"
            await self.close()
            if failures:
                raise KernelError(f"kernel pool failed to start: {failures[0]}") from failures[0]
            raise PoolClosed("pool was closed while starting")
        self._state = "running"
        for w in results:
            assert isinstance(w, _Worker)
            self._activate(w)

    def submit(
        self,
        kernel: str,
        inputs: Mapping[str, np.ndarray],
        params: Mapping[str, float | int] | None = None,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Validate and enqueue a call; returns a future. Raises at once on bad input or a full queue."""
        return self._submit(kernel, inputs, params, "auto")

    def _submit(
        self,
        kernel: str,
        inputs: Mapping[str, np.ndarray],
        params: Mapping[str, float | int] | None,
        via: str,
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        params = dict(params or {})
        self._check_running()
        registry.validate_inputs(kernel, inputs, params, check_values=False)
        if "k" in params:
            params["k"] = int(params["k"])
        self._check_capacity()
        coerced = registry.coerce_inputs(kernel, inputs)
        return self._enqueue(_Job("run", kernel, coerced, params, self._new_future(), via=via))

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
                    if isinstance(r, _Worker):
                        if self._state == "running" and self._live_count() < self._target:
                            self._activate(r)
                        else:
                            await self._reap(r)
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise KernelError(f"resize to {workers} workers failed: {failures[0]}") from failures[0]
            elif workers < old:
                live = [w for w in self._workers if w.active and not w.retiring and not w.dead]
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
    def max_queue(self) -> int:
        return self._max_queue

    def stats(self) -> PoolStats:
        busy = sum(1 for w in self._workers if w.current is not None and not w.dead)
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
        return [w.pid for w in self._workers if w.active and not w.retiring and not w.dead]

    def shared_array(self, shape: tuple[int, ...] | int, dtype: Any = np.float32) -> np.ndarray:
        """A writable ndarray allocated in shared memory: passing it to ``run`` copies nothing.

        Its segment is unlinked when the array and all its views are garbage-collected, by
        ``free_shared(arr)``, or at ``close()``.
        """
        return self._shared.new(shape, dtype)

    def free_shared(self, arr: np.ndarray) -> None:
        self._shared.free(arr)

    async def settle(self) -> None:
        """Wait until background replacements of dead workers have finished (for tests/tools)."""
        while self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)

    async def close(self, grace: float = 5.0) -> None:
        """Fail queued calls with PoolClosed, let running ones finish for up to ``grace`` seconds,
        stop every worker (killing stragglers) and free all shared memory."""
        if self._state in ("closing", "closed"):
            await self._closed.wait()
            return
        if self._state == "new":
            self._state = "closed"
            self._closed.set()
            return
        self._state = "closing"
        assert self._queue is not None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._fail(job, PoolClosed("kernel pool closed before the call ran"))
            self._release(job)
        inflight = [w.current.future for w in self._workers if w.current is not None]
        if inflight:
            await asyncio.wait(inflight, timeout=grace)
        for t in list(self._bg):
            t.cancel()
        await asyncio.gather(*list(self._bg), return_exceptions=True)
        workers = list(self._workers) + list(self._starting)
        for w in workers:
            w.retiring = True
            if w.current is not None and w.process.is_alive():
                w.stopping = True
                w.process.kill()
            if w.task is not None and w.waiting:
                w.task.cancel()
        await asyncio.gather(*(self._wait_gone(w) for w in workers), return_exceptions=True)
        with self._spare_lock:
            spare, self._spare = self._spare, []
        for seg in spare:
            seg.free()
        self._shared.close()
        shm.sweep(self._prefix)
        self._state = "closed"
        self._closed.set()

    # ------------------------------------------------------------------ benchmarks' hooks

    def _submit_probe(self, arrays: Mapping[str, np.ndarray], via: str) -> asyncio.Future[Any]:
        """Ship arrays to a worker that touches every page and answers its byte count (no kernel)."""
        self._check_running()
        self._check_capacity()
        inputs = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return self._enqueue(_Job("probe", "", inputs, {}, self._new_future(), via=via))

    def _submit_via(
        self, kernel: str, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any], via: str
    ) -> asyncio.Future[Any]:
        """Like submit, forcing the transport: via="shm" or via="pickle"."""
        return self._submit(kernel, inputs, params, via)

    # ------------------------------------------------------------------ internals

    def _check_running(self) -> None:
        if self._state != "running":
            raise PoolClosed(f"kernel pool is {self._state}")

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

    def _enqueue(self, job: _Job) -> asyncio.Future[Any]:
        assert self._queue is not None
        self._queue.put_nowait(job)
        return job.future

    def _live_count(self) -> int:
        return sum(1 for w in self._workers if w.active and not w.retiring and not w.dead)

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

    async def _spawn(self) -> _Worker:
        assert self._loop is not None
        loop = self._loop
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        wid = next(self._wids)
        proc = self._ctx.Process(  # type: ignore[attr-defined]  # typeshed: BaseContext; every real context has it
            target=worker.main,
            args=(child_conn, self._cpus),
            name=f"perfpilot-kernel-{self._id}.{wid}",
            daemon=True,
        )
        if self._ctx.get_start_method() == "spawn":
            with _without_main_module():
                proc.start()
        else:
            proc.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        w = _Worker(wid, proc, parent_conn)
        w.forgot = len(self._unlinked)
        self._starting.add(w)
        loop.add_reader(proc.sentinel, self._on_sentinel, w)
        try:
            reply = await loop.run_in_executor(
                w.executor, _roundtrip, w.conn, ("warm", self._warm, self._variants())
            )
        except (EOFError, OSError) as e:
            self._starting.discard(w)
            w.dead = True
            proc.join(timeout=1.0)
            how = _describe_exit(proc.exitcode)
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

    def _activate(self, w: _Worker) -> None:
        assert self._loop is not None
        w.active = True
        self._workers.append(w)
        w.task = self._loop.create_task(self._lifecycle(w), name=f"perfpilot-kernel-worker-{w.wid}")

    def _retire(self, w: _Worker) -> None:
        w.retiring = True
        if w.waiting and w.task is not None:
            w.task.cancel()  # idle: it is waiting on the queue, where cancelling loses nothing

    async def _lifecycle(self, w: _Worker) -> None:
        try:
            await self._serve(w)
        except asyncio.CancelledError:
            pass
        finally:
            # shielded: a second cancel must not abandon the process half-stopped
            await asyncio.shield(self._reap(w))

    async def _wait_gone(self, w: _Worker) -> None:
        """Wait for a worker's serving task to end and its process to be reaped.

        (A task cancelled before its first step never runs its ``finally``, hence the explicit reap.)
        """
        if w.task is not None:
            await asyncio.gather(w.task, return_exceptions=True)
        await self._reap(w)

    async def _serve(self, w: _Worker) -> None:
        assert self._queue is not None and self._loop is not None
        queue, loop = self._queue, self._loop
        while not (w.retiring or w.dead or self._state != "running"):
            w.waiting = True
            try:
                job = await queue.get()
            finally:
                w.waiting = False
            if job.future.done():  # cancelled by its caller while queued
                self._release(job)
                continue
            w.current = job
            try:
                reply = await loop.run_in_executor(w.executor, self._call, w, job, self._threads_per_call())
            except (EOFError, OSError) as e:
                self._on_death(w, e)
                self._release(job)
                w.current = None
                return
            except asyncio.CancelledError:
                # Only close() cancels a busy worker (after killing it); the call cannot complete.
                self._fail(job, PoolClosed("kernel pool closed while the call was running"))
                self._release(job)
                w.current = None
                raise
            except Exception as e:  # e.g. an input that cannot be pickled
                self._fail(job, KernelError(f"{job.kernel}: could not send call to worker: {e}"))
                self._release(job)
                w.current = None
                continue
            w.current = None
            self._finish(job, reply)

    def _call(self, w: _Worker, job: _Job, threads: int) -> Any:
        """Runs on the worker's own thread: put big arrays in shm, send, wait for the answer."""
        arrays: dict[str, Any] = {}
        for key, arr in job.inputs.items():
            ref = self._shared.ref_for(arr) if job.via != "pickle" else None
            if ref is not None:
                arrays[key] = ref
            elif job.via == "shm" or (job.via == "auto" and arr.nbytes > self.shm_threshold_bytes):
                seg = self._take_segment(arr.nbytes)
                job.segments.append(seg)
                seg.write(np.ascontiguousarray(arr))  # pwrite: a truncated segment cannot SIGBUS us
                # keep=True: the segment is recycled for later calls, so the worker keeps its
                # mapping (populating the page tables of a 100 MB mapping costs ~10 ms per call);
                # _recycle tells the workers to drop it when the segment is freed.
                arrays[key] = shm.ShmRef(seg.name, arr.dtype.str, tuple(int(x) for x in arr.shape), 0,
                                         keep=True)
            else:
                arrays[key] = arr
        forget = self._unlinked[w.forgot :]
        w.forgot += len(forget)
        if job.op == "probe":
            return _roundtrip(w.conn, ("probe", arrays, forget))
        outs: dict[str, shm.ShmRef] = {}
        if job.via != "pickle":
            for key, (shape, dtype) in registry.output_spec(job.kernel, job.inputs, job.params).items():
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if nbytes > self.shm_threshold_bytes:
                    seg = shm.Segment(nbytes, tag=self._tag, mapped=False)
                    job.outs[key] = (seg, shape, dtype)
                    outs[key] = shm.ShmRef(seg.name, dtype.str, shape, 0)
        parallel = self.parallel and threads > 1
        reply = _roundtrip(w.conn, ("run", job.kernel, arrays, job.params, outs, threads, parallel, forget))
        if reply[0] != "ok" or not job.outs:
            return reply
        result = dict(reply[1])
        try:  # outputs the worker wrote to shared memory: copied out with pread, never mapped here
            for key, (seg, shape, dtype) in job.outs.items():
                if key in result and result[key] is None:
                    result[key] = seg.read(shape, dtype)
        except shm.SegmentTruncated as e:
            return ("err", "SegmentLost", f"{job.kernel}: {e}")
        return ("ok", result)

    def _finish(self, job: _Job, reply: Any) -> None:
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
            self._release(job)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
            self._failed += 1

    def _take_segment(self, nbytes: int) -> shm.Segment:
        """A segment of at least ``nbytes`` (at most 2x): a recycled one if possible. Any thread."""
        with self._spare_lock:
            for i, seg in enumerate(self._spare):
                if nbytes <= seg.size <= 2 * max(nbytes, 1 << 16):
                    return self._spare.pop(i)
        return shm.Segment(nbytes, tag=self._tag, mapped=False)

    def _recycle(self, seg: shm.Segment) -> None:
        with self._spare_lock:
            if self._state == "running" and seg.usable:
                self._spare.append(seg)
                total = sum(s.size for s in self._spare)
                while total > self.spare_segment_bytes and self._spare:
                    old = self._spare.pop(0)
                    total -= old.size
                    self._unlinked.append(old.name)  # workers unmap it with their next call
                    old.free()
                return
        self._unlinked.append(seg.name)
        seg.free()

    def _release(self, job: _Job) -> None:
        for seg in job.segments:
            self._recycle(seg)
        job.segments.clear()
        for seg, _shape, _dtype in job.outs.values():
            seg.unlink()
            seg.close()  # deferred by the GC if a result view is alive
        job.outs.clear()

    def _on_sentinel(self, w: _Worker) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(w.process.sentinel)
            except (ValueError, OSError):
                pass
        if w.stopping or w.dead:
            return
        self._on_death(w, None)

    def _on_death(self, w: _Worker, cause: BaseException | None) -> None:
        if w.dead:
            return
        w.dead = True
        w.process.join(timeout=1.0)  # the sentinel fired: the process is exiting/exited
        code = w.process.exitcode
        how = _describe_exit(code)
        job = w.current
        if job is not None:
            if self._state == "running":
                exc: KernelError = WorkerDied(
                    f"kernel worker pid {w.pid} died ({how}) while running {job.kernel or job.op}"
                )
            else:
                exc = PoolClosed("kernel pool closed while the call was running")
            self._fail(job, exc)
        if not w.active:  # still warming up: _spawn reports it
            return
        if w.stopping:
            return
        log.warning("kernel worker pid %s died (%s)", w.pid, how)
        self._emit(
            "worker_died",
            {"pid": w.pid, "exitcode": code, "how": how, "kernel": job.kernel if job else None},
        )
        if w.waiting and w.task is not None:
            w.task.cancel()
        if self._state == "running" and not w.retiring:
            self._restarts += 1
            assert self._loop is not None
            t = self._loop.create_task(self._replace())
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)

    async def _replace(self) -> None:
        delay = 0.1
        for attempt in range(5):
            if self._state != "running" or self._live_count() + len(self._starting) >= self._target:
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
            if self._state == "running" and self._live_count() < self._target:
                self._activate(w)
            else:
                await self._reap(w)
            return
        self._emit("worker_died", {"detail": "replacement failed 5 times; pool is degraded"})

    async def _reap(self, w: _Worker) -> None:
        """Stop a worker's process (gracefully if it is alive and idle) and free its resources."""
        if w.reaping:
            await w.done.wait()
            return
        w.reaping = True
        try:
            await self._reap_now(w)
        finally:
            if w in self._workers:
                self._workers.remove(w)
            w.done.set()

    async def _reap_now(self, w: _Worker) -> None:
        assert self._loop is not None
        loop = self._loop
        w.stopping = True
        try:
            loop.remove_reader(w.process.sentinel)
        except (ValueError, OSError):
            pass
        if w.process.is_alive() and not w.dead:
            try:
                fut = loop.run_in_executor(w.executor, _roundtrip, w.conn, ("stop",))
                await asyncio.wait_for(fut, timeout=5.0)
            except BaseException:
                pass
            await loop.run_in_executor(None, w.process.join, 5.0)
        if w.process.is_alive():
            w.process.kill()
            await loop.run_in_executor(None, w.process.join, 5.0)
        else:
            w.process.join(timeout=0)
        w.executor.submit(w.conn.close)
        w.executor.shutdown(wait=False)
        try:
            w.process.close()
        except ValueError:
            pass
