"""One kernel worker process as the pool supervises it: start, talk, stop.

supervision.py decides when workers start, take work, retire and get replaced; this module holds
what a single worker is (its process, pipe, dispatch thread and lifecycle phase) and how a
process is started without re-importing the parent's ``__main__``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import signal
import threading
from collections.abc import Iterator
from multiprocessing import spawn as mp_spawn
from typing import TYPE_CHECKING, Any

from . import worker

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext

    from .dispatch import Job


class Phase(enum.IntEnum):
    """A worker's lifecycle; it only moves forward (DEAD: the process exited on its own)."""

    STARTING = 0  # spawned, warming up; not taking work
    ACTIVE = 1  # taking work
    RETIRING = 2  # finishes its current call, then stops (resize down, close)
    STOPPING = 3  # being stopped by the pool; its exit is expected
    DEAD = 4  # exited while the pool still counted on it


class Worker:
    """A worker process, its duplex pipe and the single thread that runs its blocking round trips."""

    def __init__(self, wid: int, process: Any, conn: Any) -> None:
        self.wid = wid
        self.process = process
        self.pid: int = process.pid
        self.conn = conn
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"perfpilot-kernel-{wid}")
        self.task: asyncio.Task[None] | None = None
        self.current: Job | None = None
        self.phase = Phase.STARTING
        self.waiting = False  # blocked in queue.get(): the only state in which we cancel its task
        self.reaping = False  # reap started (it runs once; later callers wait for `done`)
        self.done = asyncio.Event()
        self.forgot = 0  # how much of the staging's unlinked-names list this worker has been told

    def advance(self, phase: Phase) -> Phase:
        """Move to `phase` unless already there or further; returns the phase before."""
        before = self.phase
        if phase > before:
            self.phase = phase
        return before

    @property
    def live(self) -> bool:
        """Taking work (counted in the pool's size)."""
        return self.phase is Phase.ACTIVE

    async def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop the process (asking first when it is alive and idle, killing after 5 s) and free its resources."""
        self.advance(Phase.STOPPING)
        try:
            loop.remove_reader(self.process.sentinel)
        except (ValueError, OSError):
            pass
        if self.process.is_alive() and self.phase is not Phase.DEAD:
            try:
                fut = loop.run_in_executor(self.executor, roundtrip, self.conn, ("stop",))
                await asyncio.wait_for(fut, timeout=5.0)
            except BaseException:
                pass
            await loop.run_in_executor(None, self.process.join, 5.0)
        if self.process.is_alive():
            self.process.kill()
            await loop.run_in_executor(None, self.process.join, 5.0)
        else:
            self.process.join(timeout=0)
        self.executor.submit(self.conn.close)
        self.executor.shutdown(wait=False)
        try:
            self.process.close()
        except ValueError:
            pass


_spawn_lock = threading.Lock()


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
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


def start(ctx: SpawnContext | Any, wid: int, *, name: str, cpus: int) -> Worker:
    """Start a worker process (not yet warmed up)."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=worker.main, args=(child_conn, cpus), name=name, daemon=True)
    if ctx.get_start_method() == "spawn":
        with without_main_module():
            proc.start()
    else:
        proc.start()
    child_conn.close()  # so the parent sees EOF when the worker dies
    return Worker(wid, proc, parent_conn)


def roundtrip(conn: Any, msg: Any) -> Any:
    """Send one request and wait for its answer (blocking: runs on the worker's thread)."""
    conn.send(msg)
    return conn.recv()


def describe_exit(code: int | None) -> str:
    """'exit code 3', 'killed by signal SIGBUS', ..."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
