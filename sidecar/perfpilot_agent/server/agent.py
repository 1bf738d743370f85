"""The Agent servicer: thin handlers that validate, call the runtime and build replies.

Every unary handler goes through `_rpc`, which answers AgentError with its own code and message,
anything unexpected with INTERNAL (logged), and records per-method counts and latency.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from grpc import aio

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_agent.config import Settings
from perfpilot_agent.errors import AgentError, InvalidArgument
from perfpilot_agent.liveconfig import LiveConfig, to_proto
from perfpilot_agent.runtime.admission import Admission
from perfpilot_agent.runtime.cache import TTLCache
from perfpilot_agent.runtime.cache import KERNEL_KEY_PREFIX
from perfpilot_agent.runtime.compute import KernelRunner
from perfpilot_agent.runtime.events import EventBus
from perfpilot_agent.runtime.monitor import Monitor, RpcStats
from perfpilot_agent.runtime.snapshot import Snapshot, stats_proto
from perfpilot_contract import durations
from perfpilot_contract.limits import (
    CACHE_PUT_TTL,
    MAX_DEPENDENCIES,
    MAX_INVALIDATE_KEYS,
    MAX_KEY_BYTES,
    MAX_TAG_BYTES,
)
from perfpilot_contract.liveconfig import ConfigError, check_duration
from perfpilot_contract.tiercache import Deps


log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, aio.ServicerContext[Any, Any]], Awaitable[Resp]]
MAX_DETAILS = 1024
KEEPALIVE_MIN_NS, KEEPALIVE_MAX_NS = 10_000_000, 60_000_000_000
_EVENT_TYPES = frozenset(v for v in pb.EventType.values() if v != pb.EVENT_TYPE_UNSPECIFIED)


def _details(exc: AgentError) -> str:
    """The status message, bounded: it travels in trailers, and a message quoting a huge client-chosen
    name would exceed the peer's metadata limit (the client would see INTERNAL instead of our code)."""
    text = str(exc)
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 3] + "..."


def _rpc(method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Error mapping + accounting for one unary method."""

    def wrap(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        async def handler(self: AgentServicer, request: Req, context: aio.ServicerContext[Any, Any]) -> Resp:
            started = time.perf_counter()
            code = "OK"
            try:
                return await fn(self, request, context)
            except AgentError as exc:
                code = exc.code.name
                await context.abort(exc.code, _details(exc))
            except aio.AbortError:
                code = "ABORTED_BY_HANDLER"
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence, logged
                code = "INTERNAL"
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}")
            finally:
                self.app.rpc_stats.record(method, code, time.perf_counter() - started)
            raise AssertionError("unreachable")  # pragma: no cover - abort() always raises

        return handler

    return wrap


def _check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("key is required")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"key is {len(key.encode())} bytes; at most {MAX_KEY_BYTES}")
    if key.startswith(KERNEL_KEY_PREFIX):
        raise InvalidArgument(f"keys starting with {KERNEL_KEY_PREFIX!r} are reserved for kernel results")


def _check_names(path: str, names: Sequence[str], *, most: int, max_bytes: int) -> tuple[str, ...]:
    """A bounded list of non-empty, bounded strings (dependency keys, prefixes, tags)."""
    if len(names) > most:
        raise InvalidArgument(f"{path} has {len(names)} entries; at most {most}")
    for i, name in enumerate(names):
        n = len(name.encode())
        if not 1 <= n <= max_bytes:
            raise InvalidArgument(f"{path}[{i}] must be 1..{max_bytes} bytes, got {n}")
    return tuple(dict.fromkeys(names))


def _check_deps(msg: pb.CacheDependencies) -> Deps:
    return Deps(
        keys=_check_names("dependencies.keys", msg.keys, most=MAX_DEPENDENCIES, max_bytes=MAX_KEY_BYTES),
        prefixes=_check_names("dependencies.prefixes", msg.prefixes, most=MAX_DEPENDENCIES, max_bytes=MAX_KEY_BYTES),
        tags=_check_names("dependencies.tags", msg.tags, most=MAX_DEPENDENCIES, max_bytes=MAX_TAG_BYTES),
    )


def _keepalive(request: pb.WatchEventsRequest) -> float | None:
    """Seconds between keepalive batches, or None (not asked for)."""
    if not request.HasField("keepalive"):
        return None
    try:
        ns = durations.from_proto("keepalive", request.keepalive)
    except durations.DurationError as exc:
        raise InvalidArgument(str(exc)) from None
    if not KEEPALIVE_MIN_NS <= ns <= KEEPALIVE_MAX_NS:
        raise InvalidArgument(f"keepalive must be between 10ms and 1m, got {durations.format_ns(ns)}")
    return ns / 1e9


class AgentCore(Protocol):
    """What the handlers use of the agent (AgentApp provides it; the server does not import the app)."""

    settings: Settings
    config: LiveConfig
    generation: int
    monitor: Monitor
    rpc_stats: RpcStats
    runner: KernelRunner
    cache: TTLCache
    events: EventBus
    watchers: Admission

    def heartbeat(self, sequence: int) -> pb.HeartbeatResponse: ...
    def configure(self, generation: int, msg: pb.AgentConfig, *, operator: bool = False) -> bool: ...
    def snapshot(self) -> Snapshot: ...


class AgentServicer(pb_grpc.AgentServicer):
    """perfpilot.v1.Agent backed by an AgentCore (the AgentApp)."""

    def __init__(self, app: AgentCore, *, operator: bool = False) -> None:
        self.app = app
        self.operator = operator      # served on the authenticated TCP listener

    @_rpc("Heartbeat")
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: aio.ServicerContext[Any, Any]) -> pb.HeartbeatResponse:
        t0 = time.perf_counter()
        resp = self.app.heartbeat(request.sequence)
        self.app.monitor.heartbeat.observe(time.perf_counter() - t0)
        return resp

    @_rpc("Configure")
    async def Configure(self, request: pb.ConfigureRequest, context: aio.ServicerContext[Any, Any]) -> pb.ConfigureResponse:
        if request.generation <= 0:
            raise InvalidArgument(f"generation must be > 0, got {request.generation}")
        applied = self.app.configure(request.generation, request.config, operator=self.operator)
        return pb.ConfigureResponse(
            applied_generation=self.app.generation, applied=applied, config=to_proto(self.app.config)
        )

    @_rpc("GetConfig")
    async def GetConfig(self, request: pb.GetConfigRequest, context: aio.ServicerContext[Any, Any]) -> pb.GetConfigResponse:
        return pb.GetConfigResponse(generation=self.app.generation, config=to_proto(self.app.config))

    @_rpc("GetStats")
    async def GetStats(self, request: pb.GetStatsRequest, context: aio.ServicerContext[Any, Any]) -> pb.GetStatsResponse:
        return stats_proto(self.app.snapshot())

    @_rpc("RecordTimings")
    async def RecordTimings(
        self, request: pb.RecordTimingsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RecordTimingsResponse:
        return self.app.monitor.record_timings(request)

    @_rpc("RunKernel")
    async def RunKernel(self, request: pb.RunKernelRequest, context: aio.ServicerContext[Any, Any]) -> pb.RunKernelResponse:
        return await self.app.runner.run(request)

    @_rpc("CacheGet")
    async def CacheGet(self, request: pb.CacheGetRequest, context: aio.ServicerContext[Any, Any]) -> pb.CacheGetResponse:
        _check_key(request.key)
        hit = self.app.cache.lookup(request.key)
        sequence = self.app.events.sequence  # the value reflects every event up to here
        if hit is None:
            return pb.CacheGetResponse(found=False, sequence=sequence)
        resp = pb.CacheGetResponse(found=True, value=hit.value, sequence=sequence)
        resp.ttl_remaining.FromNanoseconds(int(hit.ttl_left * 1e9))
        if hit.deps:
            resp.dependencies.CopyFrom(pb.CacheDependencies(keys=hit.deps.keys, prefixes=hit.deps.prefixes,
                                                            tags=hit.deps.tags))
        return resp

    @_rpc("CachePut")
    async def CachePut(self, request: pb.CachePutRequest, context: aio.ServicerContext[Any, Any]) -> pb.CachePutResponse:
        _check_key(request.key)
        limit = self.app.settings.cache_max_value_bytes
        if len(request.value) > limit:
            raise InvalidArgument(f"value is {len(request.value)} bytes; at most {limit} (--cache-max-value-bytes)")
        ttl = None
        if request.HasField("ttl"):  # the contract's one Duration rule, cache.ttl's bounds; 0s: not stored
            try:
                ttl = check_duration(CACHE_PUT_TTL, request.ttl, path="ttl")
            except ConfigError as exc:
                raise InvalidArgument(str(exc)) from None
        deps = _check_deps(request.dependencies)
        before = self.app.events.sequence
        change = self.app.cache.write(request.key, bytes(request.value), ttl=ttl,
                                      size=len(request.value) + len(request.key), deps=deps)
        sequence = self.app.events.sequence if self.app.events.sequence != before else 0
        return pb.CachePutResponse(evicted=change.evicted, sequence=sequence, dependents_removed=change.removed)

    @_rpc("CacheInvalidate")
    async def CacheInvalidate(
        self, request: pb.CacheInvalidateRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.CacheInvalidateResponse:
        if len(request.prefix.encode()) > MAX_KEY_BYTES:
            raise InvalidArgument(f"prefix is longer than {MAX_KEY_BYTES} bytes")
        keys = _check_names("keys", request.keys, most=MAX_INVALIDATE_KEYS, max_bytes=MAX_KEY_BYTES)
        tags = _check_names("tags", request.tags, most=MAX_DEPENDENCIES, max_bytes=MAX_TAG_BYTES)
        prefixes = (request.prefix,) if request.prefix or not (keys or tags) else ()
        change = self.app.cache.drop(prefixes=prefixes, keys=keys, tags=tags)
        sequence = self.app.events.sequence
        self.app.events.publish(
            pb.EVENT_TYPE_CACHE_CLEARED, f"{change.removed} cache entries invalidated",
            {"prefix": request.prefix[:128], "removed": str(change.removed)},
        )
        return pb.CacheInvalidateResponse(removed=change.removed, sequence=sequence)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.EventBatch]:
        started = time.perf_counter()
        code = "OK"
        try:
            types = list(request.types)
            for i, t in enumerate(types):
                if t not in _EVENT_TYPES:
                    raise InvalidArgument(f"types[{i}] is not a known event type: {t}")
            if request.max_batch > 10_000:
                raise InvalidArgument(f"max_batch must be at most 10000, got {request.max_batch}")
            max_batch = request.max_batch or 1000
            keepalive = _keepalive(request)
            with self.app.watchers.slot():
                sub = self.app.events.subscribe(types, since=request.since_sequence)
                try:
                    events, dropped = sub.take_now(max_batch)
                    yield pb.EventBatch(events=events, dropped=dropped)
                    while True:
                        try:
                            batch = await asyncio.wait_for(sub.next_batch(max_batch), keepalive)
                        except TimeoutError:  # quiet: an empty batch says the stream is alive
                            yield pb.EventBatch()
                            continue
                        if batch is None:
                            return
                        yield pb.EventBatch(events=batch[0], dropped=batch[1])
                finally:
                    sub.close()
        except AgentError as exc:
            code = exc.code.name
            await context.abort(exc.code, _details(exc))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self.app.rpc_stats.record("WatchEvents", code, time.perf_counter() - started)
