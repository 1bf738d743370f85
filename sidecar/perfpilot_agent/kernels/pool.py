"""KernelPool: a live-resizable process pool running JIT kernels, with shared-memory transport.

This module is the pool's public face: construction, ``start``/``submit``/``run``/``resize``/
``close``, stats and shared arrays. It orders the work of the modules that do it (details in
docs/kernels.md):

* supervision.py: the pool's and its workers' lifecycles: ``spawn``-ed worker processes (the
  parent runs gRPC threads, so ``fork`` is unsafe) warmed before they take work, death detection
  and replacement, growing and shrinking live.
* dispatch.py: the calls: admission (``PoolSaturated`` at once when queued + in-flight calls reach
  ``max_queue``), the one queue, a call's round trip on its worker's own thread, its outcome.
* staging.py: how arrays travel: inputs above ``shm_threshold_bytes`` and arrays made by
  ``shared_array()`` go through shared memory the parent owns and frees when the call ends.
* process.py: one worker process (start, pipe round trip, stop); worker.py runs inside it.

numba is only ever imported inside workers (``worker.py`` -> ``jit.py``); importing this module
does not import numba.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import registry
from .cpus import available_cpus
from .dispatch import Dispatcher, EventHook, Job, JobKind
from .errors import KernelError, PoolClosed
from .process import Worker
from .staging import Staging, Transport
from .supervision import PoolState, Supervisor

log = logging.getLogger(__name__)

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
        self.on_event = on_event
        pool_id = next(_pool_ids)
        self.staging = Staging(f"{pool_id}_", threshold=shm_threshold_bytes)  # pp_<pid>_<pool id>_...
        self._dispatch = Dispatcher(self.staging, max_queue=int(max_queue), emit=self._emit)
        self._sup = Supervisor(
            self._dispatch,
            self.staging,
            pool_id=pool_id,
            ctx=multiprocessing.get_context(start_method),
            cpus=available_cpus(),
            workers=int(workers),
            parallel=bool(parallel),
            emit=self._emit,
        )
        self._resize_lock: asyncio.Lock | None = None
        self._closed = asyncio.Event()

    # ------------------------------------------------------------------ public API

    async def start(self, warm: Sequence[str] = ()) -> None:
        """Spawn the workers; returns once every worker has compiled/loaded ``warm`` kernels."""
        sup = self._sup
        if sup.state is not PoolState.NEW:
            raise PoolClosed(f"pool cannot be started: it is {sup.state.value}")
        names = tuple(dict.fromkeys(warm))
        for name in names:
            registry.spec(name)  # UnknownKernel for a bad name
        sup.warm = names
        sup.loop = asyncio.get_running_loop()
        self._dispatch.open(sup.loop)
        self._resize_lock = asyncio.Lock()
        sup.state = PoolState.STARTING
        results = await asyncio.gather(*(sup.spawn() for _ in range(sup.target)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures or sup.state is not PoolState.STARTING:
            for r in results:
                if isinstance(r, Worker):
                    sup.activate(r)
            sup.state = PoolState.RUNNING
            await self.close()
            if failures:
                raise KernelError(f"kernel pool failed to start: {failures[0]}") from failures[0]
            raise PoolClosed("pool was closed while starting")
        sup.state = PoolState.RUNNING
        for w in results:
            assert isinstance(w, Worker)
            sup.activate(w)

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
        self._dispatch.admit()
        coerced = registry.coerce_inputs(kernel, inputs)
        return self._dispatch.enqueue(Job(JobKind.RUN, kernel, coerced, params, self._dispatch.new_future()))

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
        sup = self._sup
        async with self._resize_lock:
            self._check_running()
            old = sup.live_count()
            sup.target = int(workers)
            pending = sup.pending()
            if workers > old + pending:
                failures = await sup.grow(workers - old - pending)
                if failures:
                    raise KernelError(f"resize to {workers} workers failed: {failures[0]}") from failures[0]
            elif workers < old:
                await sup.shrink(old - workers)
            new = sup.live_count()
        if new != old:
            self._emit("pool_resized", {"old": old, "new": new})

    def set_max_queue(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"max_queue must be >= 1, got {n}")
        self._dispatch.max_queue = int(n)

    @property
    def parallel(self) -> bool:
        """Kernels may run their parallel (``prange``) variant when a call gets more than one thread."""
        return self._sup.parallel

    @parallel.setter
    def parallel(self, value: bool) -> None:
        self._sup.parallel = bool(value)

    @property
    def shm_threshold_bytes(self) -> int:
        """Inputs and outputs larger than this travel through shared memory."""
        return self.staging.threshold

    @shm_threshold_bytes.setter
    def shm_threshold_bytes(self, n: int) -> None:
        self.staging.threshold = int(n)

    @property
    def max_queue(self) -> int:
        return self._dispatch.max_queue

    def stats(self) -> PoolStats:
        sup, dispatch = self._sup, self._dispatch
        return PoolStats(
            workers=sup.live_count(),
            busy=sup.busy(),
            queue_depth=max(0, dispatch.outstanding - sup.running()),
            max_queue=dispatch.max_queue,
            completed=dispatch.completed,
            failed=dispatch.failed,
            restarts=sup.restarts,
            warm=sup.warm,
        )

    def worker_pids(self) -> list[int]:
        return self._sup.worker_pids()

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
        await self._sup.settle()

    async def close(self, grace: float = 5.0) -> None:
        """Fail queued calls with PoolClosed, let running ones finish for up to ``grace`` seconds,
        stop every worker (killing stragglers) and free all shared memory."""
        sup = self._sup
        if sup.state in (PoolState.CLOSING, PoolState.CLOSED):
            await self._closed.wait()
            return
        if sup.state is PoolState.NEW:
            sup.state = PoolState.CLOSED
            self._closed.set()
            return
        sup.state = PoolState.CLOSING
        self.staging.recycling = False  # segments of calls ending from now on are freed
        self._dispatch.drain()
        await sup.stop_all(grace)
        self.staging.close()
        sup.state = PoolState.CLOSED
        self._closed.set()

    # ------------------------------------------------------------------ benchmarks' hooks

    def _submit_probe(self, arrays: Mapping[str, np.ndarray], via: Transport | str) -> asyncio.Future[Any]:
        """Ship arrays to a worker that touches every page and answers its byte count (no kernel)."""
        self._check_running()
        self._dispatch.admit()
        inputs = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return self._dispatch.enqueue(Job(JobKind.PROBE, "", inputs, {}, self._dispatch.new_future(), Transport(via)))

    # ------------------------------------------------------------------ internals

    def _check_running(self) -> None:
        if self._sup.state is not PoolState.RUNNING:
            raise PoolClosed(f"kernel pool is {self._sup.state.value}")

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        hook = self.on_event
        if hook is None:
            return
        try:
            hook(kind, detail)
        except Exception:  # a broken hook must not break the pool
            log.exception("kernel pool event hook failed for %s", kind)
