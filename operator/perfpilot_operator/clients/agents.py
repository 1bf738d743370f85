"""gRPC client to the sidecars, over TCP with the namespace's bearer token.

One channel per sidecar address, kept warm (a new channel's first call costs milliseconds to
seconds); calls have deadlines; concurrency across pods is bounded by the caller.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc

T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class Target:
    """A sidecar's address and the token it expects."""

    host: str
    port: int
    token: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class AgentClients:
    """Channels to many sidecars; close() when the operator stops."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, target: Target) -> pb_grpc.AgentAsyncStub:
        ch = self._channels.get(target.address)
        if ch is None:
            ch = grpc.aio.insecure_channel(target.address, options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.enable_retries", 0),
                # A pod's sidecar may start after its IP appears: reconnect quickly, not after
                # gRPC's default backoff of up to two minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ])
            self._channels[target.address] = ch
        return pb_grpc.AgentStub(ch)

    async def forget(self, address: str) -> None:
        """Drop a channel (the pod went away)."""
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    def _metadata(self, target: Target) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {target.token}"),) if target.token else ()

    async def configure(self, target: Target, request: pb.ConfigureRequest
                        ) -> pb.ConfigureResponse:
        return await self.stub(target).Configure(request, timeout=self.timeout,
                                                 metadata=self._metadata(target))

    async def get_stats(self, target: Target) -> pb.GetStatsResponse:
        return await self.stub(target).GetStats(pb.GetStatsRequest(), timeout=self.timeout,
                                                metadata=self._metadata(target))

    async def heartbeat(self, target: Target) -> pb.HeartbeatResponse:
        return await self.stub(target).Heartbeat(pb.HeartbeatRequest(), timeout=self.timeout,
                                                 metadata=self._metadata(target))

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 4,
                       base_delay: float = 0.05, max_delay: float = 1.0) -> T:
    """Retry transient gRPC failures with full-jitter exponential backoff."""
    for attempt in range(attempts):
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            if e.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(max_delay, base_delay * 2 ** attempt)))
    raise AssertionError("unreachable")


async def bounded_gather(calls: list[Callable[[], Awaitable[T]]], *, limit: int
                         ) -> list[T | BaseException]:
    """Run calls with at most `limit` in flight; exceptions are returned, not raised."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Callable[[], Awaitable[T]]) -> T | BaseException:
        async with sem:
            try:
                return await c()
            except Exception as e:  # noqa: BLE001 - reported per pod by the caller
                return e

    return list(await asyncio.gather(*(one(c) for c in calls)))
