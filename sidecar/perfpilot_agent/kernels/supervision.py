"""Supervision: which worker processes a pool has, and what happens when one starts, retires or dies.

pool.py is the public face and orders start, resize and close; process.py is one worker process;
dispatch.py is the calls. This module holds the pool's lifecycle (``PoolState``) and its workers'
(``process.Phase``):

* Workers are ``spawn``-ed and warmed (their kernels compiled or loaded) before they take work.
  Each active worker has a task running its serving loop (``Dispatcher.serve``) and reaping the
  process when the loop ends (the worker retired or died, or the pool closes).
* Death: the process sentinel is watched with ``loop.add_reader``; on death the in-flight call
  fails with ``WorkerDied`` at once, a warmed replacement is spawned and ``restarts`` counts it.
  Queued calls are not lost; they run on the remaining/replacement workers.
* Resize: growing spawns and warms new workers before they take work; shrinking marks workers as
  retiring (idle ones first); a retiring worker finishes its current call, then stops.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from typing import Any

from .dispatch import Dispatcher, EventHook
from .errors import KernelError, PoolClosed, WorkerDied
from .process import Phase, Worker, describe_exit, roundtrip
from .process import start as start_process
from .staging import Staging

log = logging.getLogger(__name__)


class PoolState(enum.Enum):
    """The pool's lifecycle."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class Supervisor:
    """A pool's worker processes and its lifecycle state. All methods run on the pool's event loop."""

    def __init__(
        self,
        dispatch: Dispatcher,
        staging: Staging,
        *,
        pool_id: int,
        ctx: Any,
        cpus: int,
        workers: int,
        parallel: bool,
        emit: EventHook,
    ) -> None:
        self.dispatch = dispatch
        self.staging = staging
        self.state = PoolState.NEW
        self.target = workers
        self.parallel = parallel
        self.warm: tuple[str, ...] = ()
        self.restarts = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._id = pool_id
        self._ctx = ctx
        self._cpus = cpus
        self._emit = emit
        self._workers: list[Worker] = []  # every worker with a live serving task
        self._starting: set[Worker] = set()
        self._bg: set[asyncio.Task[Any]] = set()
        self._wids = itertools.count(1)

    # ------------------------------------------------------------------ counts

    def live_count(self) -> int:
        return sum(1 for w in self._workers if w.live)

    def pending(self) -> int:
        """Workers spawned and still warming up."""
        return len(self._starting)

    def busy(self) -> int:
        return sum(1 for w in self._workers if w.current is not None and w.phase is not Phase.DEAD)

    def running(self) -> int:
        """Calls on a worker whose future is not settled yet."""
        return sum(1 for w in self._workers if w.current is not None and not w.current.future.done())

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.live]

    def _variants(self) -> tuple[bool, ...]:
        return (False, True) if self.parallel else (False,)

    def serving(self, w: Worker) -> bool:
        """``w`` keeps taking work: it is active and the pool is running."""
        return w.live and self.state is PoolState.RUNNING

    def threads_per_call(self) -> int:
        if not self.parallel:
            return 1
        return max(1, self._cpus // max(1, self.live_count()))

    # ------------------------------------------------------------------ a worker's life

    async def spawn(self) -> Worker:
        """Start a worker process and wait until it has warmed up (it takes no work yet)."""
        assert self.loop is not None
        loop = self.loop
        wid = next(self._wids)
        w = start_process(self._ctx, wid, name=f"perfpilot-kernel-{self._id}.{wid}", cpus=self._cpus)
        proc = w.process
        w.forgot = len(self.staging.unlinked)
        self._starting.add(w)
        loop.add_reader(proc.sentinel, self._on_sentinel, w)
        try:
            reply = await loop.run_in_executor(
                w.executor, roundtrip, w.conn, ("warm", self.warm, self._variants())
            )
        except (EOFError, OSError) as e:
            self._starting.discard(w)
            w.advance(Phase.DEAD)
            proc.join(timeout=1.0)
            how = describe_exit(proc.exitcode)
            await self.reap(w)
            raise WorkerDied(f"kernel worker pid {w.pid} died during warm-up ({how})") from e
        except BaseException:
            self._starting.discard(w)
            await self.reap(w)
            raise
        self._starting.discard(w)
        if reply[0] != "warmed":
            await self.reap(w)
            raise KernelError(f"kernel worker pid {w.pid} failed to warm up: {reply[-1]}")
        return w

    def activate(self, w: Worker) -> None:
        assert self.loop is not None
        w.advance(Phase.ACTIVE)
        self._workers.append(w)
        w.task = self.loop.create_task(self._lifecycle(w), name=f"perfpilot-kernel-worker-{w.wid}")

    def _retire(self, w: Worker) -> None:
        w.advance(Phase.RETIRING)
        if w.waiting and w.task is not None:
            w.task.cancel()  # idle: it is waiting on the queue, where cancelling loses nothing

    async def _lifecycle(self, w: Worker) -> None:
        try:
            await self.dispatch.serve(w, self)
        except asyncio.CancelledError:
            pass
        finally:
            # shielded: a second cancel must not abandon the process half-stopped
            await asyncio.shield(self.reap(w))

    async def _wait_gone(self, w: Worker) -> None:
        """Wait for a worker's serving task to end and its process to be reaped.

        (A task cancelled before its first step never runs its ``finally``, hence the explicit reap.)
        """
        if w.task is not None:
            await asyncio.gather(w.task, return_exceptions=True)
        await self.reap(w)

    def _on_sentinel(self, w: Worker) -> None:
        if self.loop is not None:
            try:
                self.loop.remove_reader(w.process.sentinel)
            except (ValueError, OSError):
                pass
        if w.phase in (Phase.STOPPING, Phase.DEAD):
            return
        self.on_death(w, None)

    def on_death(self, w: Worker, cause: BaseException | None) -> None:
        was = w.advance(Phase.DEAD)
        if was is Phase.DEAD:
            return
        w.process.join(timeout=1.0)  # the sentinel fired: the process is exiting/exited
        code = w.process.exitcode
        how = describe_exit(code)
        job = w.current
        if job is not None:
            if self.state is PoolState.RUNNING:
                exc: KernelError = WorkerDied(
                    f"kernel worker pid {w.pid} died ({how}) while running {job.kernel or job.kind.value}"
                )
            else:
                exc = PoolClosed("kernel pool closed while the call was running")
            self.dispatch.fail(job, exc)
        if was is Phase.STARTING:  # still warming up: spawn reports it
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
        if self.state is PoolState.RUNNING and was is Phase.ACTIVE:
            self.restarts += 1
            assert self.loop is not None
            t = self.loop.create_task(self._replace())
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)

    async def _replace(self) -> None:
        delay = 0.1
        for attempt in range(5):
            if self.state is not PoolState.RUNNING or self.live_count() + len(self._starting) >= self.target:
                return
            try:
                w = await self.spawn()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("replacing kernel worker failed (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if self.state is PoolState.RUNNING and self.live_count() < self.target:
                self.activate(w)
            else:
                await self.reap(w)
            return
        self._emit("worker_died", {"detail": "replacement failed 5 times; pool is degraded"})

    async def reap(self, w: Worker) -> None:
        """Stop a worker's process (gracefully if it is alive and idle) and free its resources."""
        if w.reaping:
            await w.done.wait()
            return
        w.reaping = True
        try:
            assert self.loop is not None
            await w.stop(self.loop)
        finally:
            if w in self._workers:
                self._workers.remove(w)
            w.done.set()

    # ------------------------------------------------------------------ the pool's size

    async def grow(self, count: int) -> list[BaseException]:
        """Spawn ``count`` workers; activate those still wanted. Returns the spawns that failed."""
        results = await asyncio.gather(*(self.spawn() for _ in range(count)), return_exceptions=True)
        for r in results:
            if isinstance(r, Worker):
                if self.state is PoolState.RUNNING and self.live_count() < self.target:
                    self.activate(r)
                else:
                    await self.reap(r)
        return [r for r in results if isinstance(r, BaseException)]

    async def shrink(self, count: int) -> None:
        """Retire ``count`` live workers, idle ones first, and wait until they are gone."""
        live = [w for w in self._workers if w.live]
        live.sort(key=lambda w: w.current is not None)  # idle first
        retiring = live[:count]
        for w in retiring:
            self._retire(w)
        await asyncio.gather(*(self._wait_gone(w) for w in retiring))

    async def settle(self) -> None:
        """Wait until background replacements of dead workers have finished."""
        while self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)

    async def stop_all(self, grace: float) -> None:
        """The pool is closing: let running calls finish for up to ``grace`` seconds, then stop
        every worker (killing stragglers) and any replacement under way."""
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
