"""RunKernel's engine: admission, tensor decoding, result cache, and the lazily created pool.

The kernels package (and with it NumPy and, in the workers, numba) is imported only when kernels
are configured or first called, so a heartbeat-only agent stays small. The pool is written against
the API of perfpilot_agent.kernels.pool.KernelPool; tests inject a fake with the same shape.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import xxhash

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.config import Settings
from perfpilot_agent.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from perfpilot_agent.liveconfig import LiveConfig
from perfpilot_agent.runtime.admission import Admission
from perfpilot_agent.runtime.cache import KERNEL_KEY_PREFIX, TTLCache
from perfpilot_agent.runtime.monitor import Monitor
from perfpilot_agent.runtime.events import EventBus

log = logging.getLogger(__name__)

MAX_INPUTS = 16
_DIGEST_IN_THREAD_BYTES = 1 << 20


class PoolLike(Protocol):
    """The subset of KernelPool the agent uses."""

    async def start(self, warm: list[str]) -> None: ...
    async def run(self, name: str, inputs: dict[str, Any], params: dict[str, float]) -> dict[str, Any]: ...
    async def resize(self, workers: int) -> None: ...
    def stats(self) -> Any: ...
    def worker_pids(self) -> list[int]: ...
    async def close(self) -> None: ...


PoolFactory = Callable[[LiveConfig, Settings], PoolLike]


def default_pool_factory(cfg: LiveConfig, settings: Settings) -> PoolLike:
    """The real process pool (imports the kernels package on first use)."""
    from perfpilot_agent.kernels.pool import KernelPool  # lazy: keeps numba out of heartbeat-only agents

    return KernelPool(
        workers=cfg.pools.process_workers,
        max_queue=1_000_000,  # admission is enforced here (pools.maxQueue), live-resizable
        shm_threshold_bytes=settings.shm_threshold_bytes,
        parallel=cfg.kernels.parallel,
    )


def load_registry() -> Any | None:
    """The kernels registry module, or None when the kernels package is not installed."""
    try:
        return importlib.import_module("perfpilot_agent.kernels.registry")
    except ImportError as exc:
        log.debug("kernels registry unavailable: %s", exc)
        return None


class KernelRunner:
    """Owns the pool, the kernel admission limit and kernel result caching."""

    def __init__(
        self,
        *,
        settings: Settings,
        config: Callable[[], LiveConfig],
        cache: TTLCache,
        monitor: Monitor,
        events: EventBus,
        pool_factory: PoolFactory | None = None,
        registry_loader: Callable[[], Any | None] = load_registry,
    ) -> None:
        self.settings = settings
        self.config = config
        self.cache = cache
        self.monitor = monitor
        self.events = events
        self.pool_factory = pool_factory or default_pool_factory
        self.registry_loader = registry_loader
        self.admission = Admission("kernel", config().pools.max_queue, setting="pools.maxQueue")
        self.pool: PoolLike | None = None
        self.ready = asyncio.Event()
        self._pool_lock = asyncio.Lock()
        self._registry: Any | None = None
        self._registry_loaded = False
        self._last_overload = 0.0
        self._tensors: Any = None  # runtime.tensors, imported on the first RunKernel
        self._outputs: Any = None  # tensors.OutputSegments
        self.executor: Executor | None = None  # pools.threadWorkers threads, set by the app
        self.staging_limit = 4 * settings.max_tensor_bytes  # shared-memory input bytes copied, all calls
        self._staged = 0

    # -- registry -------------------------------------------------------------------------------

    def registry(self) -> Any | None:
        """Cached registry module (None when kernels are not installed)."""
        if not self._registry_loaded:
            self._registry = self.registry_loader()
            self._registry_loaded = True
        return self._registry

    def known_kernels(self) -> frozenset[str] | None:
        """Kernel names for config validation."""
        reg = self.registry()
        return None if reg is None else frozenset(reg.KERNELS)

    # -- lifecycle ------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Start the pool with the warm kernels (if any), then mark kernels ready."""
        cfg = self.config()
        if cfg.kernels.warm and cfg.pools.process_workers == 0:
            log.warning("kernels.warm is ignored: pools.processWorkers is 0 (no kernel pool)")
        elif cfg.kernels.warm:
            await self.ensure_pool()
            self.events.publish(pb.EVENT_TYPE_KERNELS_READY, f"warm kernels compiled: {', '.join(cfg.kernels.warm)}",
                                {"kernels": ",".join(cfg.kernels.warm)})
        self.ready.set()

    async def ensure_pool(self) -> PoolLike:
        """The running pool, created and started on first need (concurrent callers share one start)."""
        if self.pool is not None:
            return self.pool
        async with self._pool_lock:
            if self.pool is None:
                cfg = self.config()
                if cfg.pools.process_workers == 0:
                    raise FailedPrecondition("kernels are off: pools.processWorkers is 0 "
                                             "(a heartbeat-only agent); set it to 1 or more")
                try:
                    pool = self.pool_factory(cfg, self.settings)
                except ImportError as exc:
                    raise FailedPrecondition(f"kernels are not installed in this agent: {exc}") from None
                if hasattr(pool, "on_event") and pool.on_event is None:
                    pool.on_event = self._pool_event
                await pool.start(warm=list(cfg.kernels.warm))
                self.pool = pool
                self.events.publish(pb.EVENT_TYPE_POOL_RESIZED, f"kernel pool started with {cfg.pools.process_workers} workers",
                                    {"workers": str(cfg.pools.process_workers), "previous": "0"})
            return self.pool

    async def apply(self, old: LiveConfig, new: LiveConfig) -> None:
        """Apply a new config: admission limit at once, pool size in place."""
        self.admission.limit = new.pools.max_queue
        if self.pool is not None and new.pools.process_workers == 0:
            pool, self.pool = self.pool, None
            await pool.close()
            self.events.publish(
                pb.EVENT_TYPE_POOL_RESIZED,
                f"kernel pool stopped (was {old.pools.process_workers} workers): processWorkers 0",
                {"workers": "0", "previous": str(old.pools.process_workers)},
            )
        elif self.pool is not None and old.pools.process_workers != new.pools.process_workers:
            await self.pool.resize(new.pools.process_workers)
            self.events.publish(
                pb.EVENT_TYPE_POOL_RESIZED,
                f"kernel pool resized from {old.pools.process_workers} to {new.pools.process_workers} workers",
                {"workers": str(new.pools.process_workers), "previous": str(old.pools.process_workers)},
            )
        elif self.pool is None and new.kernels.warm and new.pools.process_workers > 0:
            await self.ensure_pool()

    async def close(self) -> None:
        """Stop the workers and remove output segments nobody collected."""
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()
        if self._outputs is not None:
            self._outputs.reap(everything=True)

    def housekeeping(self) -> None:
        """Periodic: unlink output segments nobody collected."""
        if self._outputs is not None:
            self._outputs.reap()

    def _pool_event(self, kind: str, detail: dict[str, Any]) -> None:
        """KernelPool's event hook: worker deaths become WORKER_DIED events (resizes are published by apply)."""
        if kind == "worker_died":
            attrs = {k: str(v)[:200] for k, v in detail.items()}
            self.events.publish_threadsafe(pb.EVENT_TYPE_WORKER_DIED, f"kernel worker died: {attrs}", attrs)

    # -- RunKernel ------------------------------------------------------------------------------

    def overloaded(self, admission: Admission) -> None:
        """Publish an OVERLOAD event, at most once per second per agent."""
        now = time.monotonic()
        if now - self._last_overload >= 1.0:
            self._last_overload = now
            self.events.publish(pb.EVENT_TYPE_OVERLOAD, f"{admission.name} queue full; calls rejected",
                                {"class": admission.name, "limit": str(admission.limit),
                                 "rejected_total": str(admission.rejected)})

    async def run(self, req: pb.RunKernelRequest) -> pb.RunKernelResponse:
        """Validate, admit, look up the cache, run on the pool, encode."""
        started = time.perf_counter()
        if self._tensors is None:
            from perfpilot_agent.runtime import tensors  # lazy: NumPy only once kernels are used

            self._tensors = tensors
            self._outputs = tensors.OutputSegments(grace=self.settings.shm_output_grace)
        reg = self.registry()
        if reg is None:
            raise FailedPrecondition("kernels are not installed in this agent")
        if not req.kernel:
            raise InvalidArgument("kernel is required")
        if req.kernel not in reg.KERNELS:
            raise InvalidArgument(f"unknown kernel {req.kernel[:80]!r}; known: {', '.join(sorted(reg.KERNELS))}")
        if len(req.inputs) > MAX_INPUTS:
            raise InvalidArgument(f"too many inputs ({len(req.inputs)}); at most {MAX_INPUTS}")
        spec = reg.KERNELS[req.kernel]
        for field, names, allowed in (("inputs", req.inputs, spec.inputs), ("params", req.params, spec.params)):
            for name in names:  # before anything quotes a client-chosen name in a message
                if name not in allowed:
                    raise InvalidArgument(f"{field}[{name[:64]!r}] is not one of {req.kernel}'s {field}: "
                                          f"{', '.join(allowed) or 'none'}")
        if not self.admission.try_acquire():
            self.overloaded(self.admission)
            raise ResourceExhausted(
                f"kernel queue is full ({self.admission.in_flight} in flight, pools.maxQueue={self.admission.limit}); retry later"
            )
        ok = False
        cache_hit = False
        try:
            outputs, cache_hit = await self._run_admitted(req, reg)
            resp = self._encode(req, outputs)
            ok = True
        finally:
            self.admission.release()
            self.monitor.record_kernel(req.kernel, time.perf_counter() - started, error=not ok, cache_hit=cache_hit)
        resp.cache_hit = cache_hit
        resp.elapsed_seconds = time.perf_counter() - started
        return resp

    async def _run_admitted(self, req: pb.RunKernelRequest, reg: Any) -> tuple[dict[str, Any], bool]:
        t = self._tensors
        staged = 0
        inputs: dict[str, Any] = {}
        try:
            batch = t.Inputs(req.inputs, max_bytes=self.settings.max_tensor_bytes)
            reading: asyncio.Future[None] | None = None
            try:
                staged = batch.shm_bytes
                if self._staged + staged > self.staging_limit:
                    staged = 0
                    self.overloaded(self.admission)
                    raise ResourceExhausted(
                        f"shared-memory inputs of calls in flight would exceed {self.staging_limit} bytes "
                        "(4 x --max-tensor-bytes); retry later"
                    )
                self._staged += staged
                if staged >= _DIGEST_IN_THREAD_BYTES:
                    reading = asyncio.get_running_loop().run_in_executor(self.executor, batch.read)
                    await asyncio.shield(reading)  # a cancelled call must not close fds the thread still reads
                else:
                    batch.read()
            finally:
                if reading is not None and not reading.done():
                    reading.add_done_callback(lambda _: batch.close())
                else:
                    batch.close()
            inputs = batch.arrays()
            params = t.decode_params(req.params)
            errors = importlib.import_module("perfpilot_agent.kernels.errors")
            try:
                reg.validate_inputs(req.kernel, inputs, params, check_values=False)  # O(1); values: in the worker
            except errors.KernelInputError as exc:
                raise InvalidArgument(str(exc)) from None
            key = None
            if req.use_cache:
                key = await self._digest(req.kernel, inputs, params)
                hit = self.cache.get(key)
                if hit is not None:
                    return hit[0], True
            pool = await self.ensure_pool()
            try:
                outputs = await pool.run(req.kernel, inputs, params)
            except errors.KernelInputError as exc:
                raise InvalidArgument(str(exc)) from None
            except errors.PoolSaturated as exc:
                self.overloaded(self.admission)
                raise ResourceExhausted(str(exc)) from None
            except errors.WorkerDied as exc:
                raise Unavailable(f"kernel worker died: {exc}") from None
            except errors.PoolClosed as exc:
                raise Unavailable(f"kernel pool is closed: {exc}") from None
            except errors.StagingFailed as exc:
                raise ResourceExhausted(f"{exc}; retry later, or size the pod's /dev/shm for the calls in flight "
                                        "(PerfProfile spec.resources.sharedMemory)") from None
            except errors.SegmentLost as exc:
                raise Unavailable(f"a shared-memory segment of this call was changed by another process: {exc}") from None
            if key is not None:
                owned = {k: (v if getattr(v, "base", None) is None else v.copy()) for k, v in outputs.items()}
                self.cache.put(key, owned, size=sum(int(v.nbytes) for v in owned.values()))
                outputs = owned
            return outputs, False
        finally:
            inputs.clear()
            self._staged -= staged

    async def _digest(self, kernel: str, inputs: dict[str, Any], params: dict[str, float]) -> str:
        """XXH3-128 over kernel, dtype/shape/bytes of each input and the params (off-loop when large).

        XXH3 runs near memory speed (~3 ms for 80 MB here, blake2b ~130 ms: slower than most kernels,
        which made the result cache a loss for large inputs). It is not cryptographic; that is fine
        because only the pod's own app (Unix socket) or the operator (mutual TLS) fills this cache
        and reads it back, and an accidental 128-bit collision is out of reach."""

        def work() -> str:
            h = xxhash.xxh3_128()
            h.update(kernel.encode())
            for name in sorted(inputs):
                arr = inputs[name]
                h.update(f"|{name}|{arr.dtype.str}|{arr.shape}|".encode())
                h.update(memoryview(arr).cast("B"))
            for name in sorted(params):
                h.update(f"|{name}={params[name]!r}".encode())
            return f"{KERNEL_KEY_PREFIX}{kernel}/{h.hexdigest()}"

        if sum(a.nbytes for a in inputs.values()) >= _DIGEST_IN_THREAD_BYTES:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        return work()

    def _encode(self, req: pb.RunKernelRequest, outputs: dict[str, Any]) -> pb.RunKernelResponse:
        t = self._tensors
        shm = self._outputs if req.output_placement == pb.OUTPUT_PLACEMENT_SHARED_MEMORY else None
        resp = pb.RunKernelResponse()
        for name, arr in outputs.items():
            resp.outputs[name].CopyFrom(t.encode(arr, shm=shm, shm_threshold=self.settings.shm_threshold_bytes))
        return resp
