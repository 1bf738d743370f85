"""AsyncAgentClient: the asyncio client for apps (FastAPI, aiohttp, agent frameworks).

Same behaviour as AgentClient, with asyncio tasks instead of threads: the grpc.aio channel and the
background tasks are created on first use inside the running loop (a grpc.aio channel is bound to
its loop). `measure()` works as `with`, `async with` and as a decorator; the hot path never awaits.
Config callbacks may be plain functions or coroutine functions. Failed calls raise PerfpilotError
subclasses, never grpc's; idempotent calls are retried on UNAVAILABLE (channel.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self, TypeVar

import grpc
from grpc import aio

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_client.base import (
    ClientBase,
    ConfigCallback,
    ReadyWait,
    invalidate_request,
    invalidated_prefixes,
    put_request,
    require_numpy,
    rpc_name,
    watch_request,
)
from perfpilot_client.config import AgentConfig
from perfpilot_client.errors import PerfpilotError, from_rpc_error
from perfpilot_client.timings import STATS_INTERVAL

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncAgentClient(ClientBase):
    """asyncio client. `await AsyncAgentClient.connect()`, `async with AsyncAgentClient() as agent:`;
    `await agent.close()` at the end."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float = 10.0,
        shm_threshold: int | None = None,
        batch_size: int | None = None,
        batch_wait: float | None = None,
        max_message_bytes: int = 64 << 20,
        near_cache: bool = True,
    ) -> None:
        super().__init__(target, timeout=timeout, shm_threshold=shm_threshold,
                         batch_size=batch_size, batch_wait=batch_wait, max_message_bytes=max_message_bytes,
                         near_cache=near_cache)
        self._channel: aio.Channel | None = None
        self._stub: pb_grpc.AgentAsyncStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._flusher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self.timings.on_first = lambda: self._kick(self._wake)
        self.timings.on_full = lambda: self._kick(self._full)
        self._watching = asyncio.Event()
        self._attempted = asyncio.Event()
        self._closed = False

    @classmethod
    async def connect(
        cls, target: str | None = None, *, wait: float = 10.0, warm: bool = True, **kwargs: Any
    ) -> AsyncAgentClient:
        """A client whose sidecar answered within `wait` seconds (see wait_ready), else
        SidecarUnavailable. The first client connected becomes the default for `measure("op")`."""
        client = cls(target, **kwargs)
        try:
            await client.wait_ready(wait, warm=warm)
        except BaseException:
            await client.close()
            raise
        client._set_default_if_none()
        return client

    async def __aenter__(self) -> Self:
        self.stub  # noqa: B018 - open the channel now
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def stub(self) -> pb_grpc.AgentAsyncStub:
        """The stub on this loop's channel (created on first use)."""
        if self._stub is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._channel = aio.insecure_channel(self.target, options=self.channel_options)
            self._stub = pb_grpc.AgentStub(self._channel)
        return self._stub

    async def close(self) -> None:
        """Flush timings, stop the watcher, close the channel."""
        self._closed = True
        if self._flusher is not None:
            self._wake.set()
            self._full.set()
            await asyncio.wait({self._flusher}, timeout=5)
            self._flusher.cancel()
        elif self.timings.items and self._channel is not None:
            await self.flush()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
        self.segment_pool.close()
        self._forget_default()

    async def _call(self, method: aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, **kwargs: Any) -> Resp:
        """One unary call with the client's deadline; grpc errors become PerfpilotError."""
        try:
            return await method(request, timeout=kwargs.pop("timeout", self.timeout), metadata=self.metadata,
                                **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, rpc_name(request)) from exc

    # -- plain calls -------------------------------------------------------------------------------

    async def heartbeat(self, sequence: int = 0) -> pb.HeartbeatResponse:
        """One Heartbeat."""
        return await self._call(self.stub.Heartbeat, pb.HeartbeatRequest(sequence=sequence))

    async def stats(self) -> pb.GetStatsResponse:
        """GetStats snapshot."""
        return await self._call(self.stub.GetStats, pb.GetStatsRequest())

    async def wait_ready(self, timeout: float = 10.0, *, warm: bool = True) -> pb.HeartbeatResponse:
        """Wait until the sidecar answers (and, with warm=True, has compiled its warm kernels), at
        most `timeout` seconds; then SidecarUnavailable saying what it saw last."""
        wait = ReadyWait(self.target, timeout, warm)
        while not self._closed:
            await asyncio.sleep(wait.pause())  # the poll interval while the sidecar warms up
            try:
                resp = await self._call(self.stub.Heartbeat, pb.HeartbeatRequest(), wait_for_ready=True,
                                        timeout=wait.left())
                if wait.ready(resp):
                    return resp
            except PerfpilotError as exc:
                wait.cause = exc
        raise wait.error()

    async def cache_get(self, key: str) -> bytes | None:
        """The cached value, or None: from L1 when cache.l1 is on and its event stream is live, else
        from the sidecar (then kept in L1)."""
        if self._watcher is None:
            await self._start_l1()
        value = self.l1.get(key)
        if value is not None:
            return value
        ticket = self.l1.ticket()
        resp = await self._call(self.stub.CacheGet, pb.CacheGetRequest(key=key))
        return self._l1_filled_from_get(key, resp, ticket)

    async def cache_put(self, key: str, value: bytes, *, ttl: float | None = None, depends_on: Sequence[str] = (),
                        depends_on_prefixes: Sequence[str] = (), tags: Sequence[str] = ()) -> None:
        """Store a value (ttl in seconds; None = the profile's cache.ttl); see AgentClient.cache_put
        for the dependencies."""
        if self._watcher is None:
            await self._start_l1()
        req = put_request(key, value, ttl, depends_on, depends_on_prefixes, tags)
        ticket = self.l1.ticket()
        self._l1_after_put(req, await self._call(self.stub.CachePut, req), ticket)

    async def cache_invalidate(self, prefix: str = "", *, keys: Sequence[str] = (), tags: Sequence[str] = ()) -> int:
        """Remove entries by key prefix ("" = all, unless keys or tags are given), exact keys and
        tags, with everything depending on them; returns how many went."""
        req = invalidate_request(prefix, keys, tags)
        removed = int((await self._call(self.stub.CacheInvalidate, req)).removed)
        self.l1.discard(prefixes=invalidated_prefixes(req), keys=req.keys, tags=req.tags)
        return removed

    async def _start_l1(self) -> None:
        """First cache call: subscribe (the live config says whether L1 is on) and start the flusher
        that reports L1's counters."""
        await self._ensure_watcher()
        self._start_flusher()

    async def run_kernel(self, kernel: str, /, *, use_cache: bool = False, **inputs: Any) -> dict[str, Any]:
        """Run a kernel: arrays become inputs, scalars params; returns NumPy arrays (needs the
        `perfpilot[client-kernels]` extra)."""
        require_numpy()
        from perfpilot_client import tensors

        segments = tensors.Segments(self.segment_pool)
        try:
            req = tensors.build_request(kernel, inputs, use_cache=use_cache,
                                        shm_threshold=self.shm_threshold, segments=segments)
            resp = await self._call(self.stub.RunKernel, req)
        finally:
            segments.close()
        return tensors.decode_outputs(resp)

    # -- timings -------------------------------------------------------------------------------------

    def _kick(self, event: asyncio.Event) -> None:
        """Buffer signal (first observation / batch full): start the flusher on the client's loop if
        needed, then set `event` there. From another thread it is handed over to the loop; before the
        client's first use in a loop, observations wait for the next signal or close()."""
        if threading.get_ident() == self._loop_thread or self._loop is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            self._start_flusher()
            event.set()
        else:
            try:
                self._loop.call_soon_threadsafe(self._start_flusher)
                self._loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: nothing will send these any more
                pass

    def _start_flusher(self) -> None:
        if self._flusher is None and not self._closed:
            self.stub  # noqa: B018 - bind to this loop
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            try:  # a timeout flushes only the L1 counters, if they changed
                await asyncio.wait_for(self._wake.wait(), STATS_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._closed and len(self.timings.items) < self.timings.batch_size:
                try:
                    await asyncio.wait_for(self._full.wait(), self.timings.batch_wait)
                except TimeoutError:
                    pass
            self._full.clear()
            await self.flush()
            if self._closed:
                return
            if self.timings.items:
                self._wake.set()

    async def flush(self) -> None:
        """Send buffered timings now (failures are counted in timings.failed, never raised)."""
        while (req := self.timings.drain()) is not None:
            n = sum(len(o.durations_seconds) for o in req.ops)
            try:
                self.timings.acknowledge(await self._call(self.stub.RecordTimings, req))
            except PerfpilotError:
                self.timings.failed += n

    # -- live config ---------------------------------------------------------------------------------

    async def get_config(self) -> AgentConfig:
        """The live config; the first call subscribes to changes, later calls are free while subscribed."""
        await self._ensure_watcher()
        cfg = self._config
        if cfg is None or not self._watching.is_set():
            cfg = await self.refresh_config()
        return cfg

    @property
    def config(self) -> AgentConfig:
        """Last known config (await get_config() once first)."""
        if self._config is None:
            raise RuntimeError("no config yet: await agent.get_config() first")
        return self._config

    async def refresh_config(self) -> AgentConfig:
        """Read the config now; fires callbacks if it changed."""
        r = await self._call(self.stub.GetConfig, pb.GetConfigRequest())
        changed = self._adopt(r.generation, r.config)
        if changed is not None:
            await self._fire_async(changed)
        assert self._config is not None
        return self._config

    async def on_config_change(self, callback: ConfigCallback) -> None:
        """Call `callback(config)` (sync or async) whenever a newer config is applied."""
        self._callbacks.append(callback)
        await self._ensure_watcher()

    async def _fire_async(self, cfg: AgentConfig) -> None:
        for cb in list(self._callbacks):
            try:
                result = cb(cfg)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a broken callback must not stop the watcher
                log.exception("config change callback failed")

    async def _ensure_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        try:
            await asyncio.wait_for(self._attempted.wait(), self.timeout)
        except TimeoutError:
            pass

    async def _watch(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                cache_events = self._wants_cache_events()
                call = self.stub.WatchEvents(watch_request(cache_events), metadata=self.metadata)
                first, switched = True, False
                async for batch in call:
                    if first:
                        first = False
                        await self.refresh_config()
                        self.l1.subscribed(cache_events=cache_events)
                        self._watching.set()
                        self._attempted.set()
                        backoff = 0.1
                    self.l1.on_batch(batch)
                    for ev in batch.events:
                        if ev.type == pb.EVENT_TYPE_CONFIG_APPLIED:
                            changed = self._adopt(ev.generation, ev.config)
                            if changed is not None:
                                await self._fire_async(changed)
                    if self.l1.wanted() != cache_events:
                        switched = True
                        break
                self._watching.clear()
                if switched:  # L1 turned on or off: resubscribe at once, with(out) the cache events
                    call.cancel()
                    self.l1.lost(count=False)
                    continue
                self.l1.lost()
            except (grpc.RpcError, PerfpilotError) as exc:
                self._watching.clear()
                self.l1.lost()
                self._attempted.set()
                if self._closed or (isinstance(exc, aio.AioRpcError) and exc.code() == grpc.StatusCode.CANCELLED):
                    return
                log.debug("config watch interrupted: %s", exc)
            await asyncio.sleep(backoff)  # reconnect backoff, not synchronisation
            backoff = min(backoff * 2, 5.0)

    async def watch_events(
        self, types: Sequence[pb.EventType.ValueType] = (), *, since: int = 0, max_batch: int = 0
    ) -> AsyncIterator[pb.EventBatch]:
        """Raw WatchEvents stream (the first batch arrives at once and may be empty); closing the
        iterator cancels the call."""
        req = pb.WatchEventsRequest(types=list(types), since_sequence=since, max_batch=max_batch)
        call = self.stub.WatchEvents(req, metadata=self.metadata)
        try:
            async for batch in call:
                yield batch
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, "WatchEvents") from exc
        finally:
            call.cancel()
