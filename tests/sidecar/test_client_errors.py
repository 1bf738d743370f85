"""Typed errors, the retry policy and the bounded wait, against real gRPC servers.

A scripted Agent servicer (a real grpc.aio server on a Unix socket) answers each call with the next
status of a script, so retries are counted exactly; the real in-process agent covers the errors
it produces itself. The sync client runs in worker threads, the servers on the test loop."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_client import (
    AgentClient,
    AsyncAgentClient,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Overloaded,
    PerfpilotError,
    SidecarError,
    SidecarUnavailable,
    Unauthenticated,
)
from perfpilot_client.channel import IDEMPOTENT_METHODS, NOT_RETRIED_METHODS, RETRY_MAX_ATTEMPTS
from tests.sidecar.conftest import Agent, FakePools, MakeAgent

Context = aio.ServicerContext[Any, Any]
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass
class Scripted(pb_grpc.AgentServicer):
    """Answers method M with the codes queued in script[M] (then OK) and counts every attempt."""

    script: dict[str, list[grpc.StatusCode]] = field(default_factory=lambda: defaultdict(list))
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def _answer(self, method: str, context: Context) -> None:
        self.attempts[method] += 1
        queue = self.script[method]
        code = queue.pop(0) if queue else OK
        if code != OK:
            await context.abort(code, f"scripted {code.name}")

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        await self._answer("Heartbeat", context)
        return pb.HeartbeatResponse(state=pb.AGENT_STATE_READY)

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        await self._answer("GetStats", context)
        return pb.GetStatsResponse(uptime_seconds=1.0)

    async def CacheGet(self, request: pb.CacheGetRequest, context: Context) -> pb.CacheGetResponse:
        await self._answer("CacheGet", context)
        return pb.CacheGetResponse(found=True, value=b"v")

    async def CachePut(self, request: pb.CachePutRequest, context: Context) -> pb.CachePutResponse:
        await self._answer("CachePut", context)
        return pb.CachePutResponse()

    async def RecordTimings(
        self, request: pb.RecordTimingsRequest, context: Context
    ) -> pb.RecordTimingsResponse:
        await self._answer("RecordTimings", context)
        return pb.RecordTimingsResponse(accepted=sum(len(o.durations_seconds) for o in request.ops))

    async def RunKernel(self, request: pb.RunKernelRequest, context: Context) -> pb.RunKernelResponse:
        await self._answer("RunKernel", context)
        return pb.RunKernelResponse()


@pytest.fixture
async def scripted(sock_dir: str) -> AsyncIterator[tuple[Scripted, str]]:
    servicer = Scripted()  # type: ignore[abstract] # unscripted methods answer UNIMPLEMENTED
    server = aio.server()
    pb_grpc.add_AgentServicer_to_server(servicer, server)
    path = f"{sock_dir}/scripted.sock"
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    yield servicer, path
    await server.stop(None)


def test_retry_policy_covers_every_method_once() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["Agent"].methods_by_name)
    assert set(IDEMPOTENT_METHODS) | set(NOT_RETRIED_METHODS) == methods
    assert not set(IDEMPOTENT_METHODS) & set(NOT_RETRIED_METHODS)


async def test_idempotent_calls_are_retried_on_unavailable(scripted: tuple[Scripted, str]) -> None:
    servicer, path = scripted
    servicer.script["CacheGet"] = [UNAVAILABLE, UNAVAILABLE]
    servicer.script["CachePut"] = [UNAVAILABLE]
    async with AsyncAgentClient(path) as client:
        assert await client.cache_get("k") == b"v"
        await client.cache_put("k", b"v")
    assert servicer.attempts["CacheGet"] == 3 and servicer.attempts["CachePut"] == 2

    servicer.script["GetStats"] = [UNAVAILABLE]

    def sync() -> float:
        with AgentClient(path) as c:
            return c.stats().uptime_seconds

    assert await asyncio.to_thread(sync) == 1.0
    assert servicer.attempts["GetStats"] == 2


async def test_retries_are_bounded(scripted: tuple[Scripted, str]) -> None:
    servicer, path = scripted
    servicer.script["CacheGet"] = [UNAVAILABLE] * (RETRY_MAX_ATTEMPTS + 2)
    async with AsyncAgentClient(path) as client:
        with pytest.raises(SidecarUnavailable) as info:
            await client.cache_get("k")
    assert servicer.attempts["CacheGet"] == RETRY_MAX_ATTEMPTS
    assert isinstance(info.value.__cause__, grpc.RpcError) and info.value.code == "UNAVAILABLE"


async def test_non_idempotent_calls_are_never_retried(scripted: tuple[Scripted, str]) -> None:
    servicer, path = scripted
    servicer.script["RecordTimings"] = [UNAVAILABLE]
    servicer.script["RunKernel"] = [UNAVAILABLE]
    async with AsyncAgentClient(path, batch_size=1000, batch_wait=3600.0) as client:
        with client.measure("op"):
            pass
        await client.flush()
        assert (client.timings.sent, client.timings.failed) == (0, 1)  # counted, never raised
        with pytest.raises(SidecarUnavailable, match="RunKernel: scripted UNAVAILABLE"):
            await client.run_kernel("cosine_topk", query=np.ones((1, 2), np.float32), k=1)
    assert servicer.attempts["RecordTimings"] == 1 and servicer.attempts["RunKernel"] == 1


@pytest.mark.parametrize(("code", "error"), [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    (grpc.StatusCode.UNAVAILABLE, SidecarUnavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.INTERNAL, SidecarError),
    (grpc.StatusCode.UNKNOWN, SidecarError),
])
async def test_status_codes_map_to_typed_errors(scripted: tuple[Scripted, str], code: grpc.StatusCode,
                                                error: type[PerfpilotError]) -> None:
    servicer, path = scripted
    servicer.script["RunKernel"] = [code]  # never retried, so one scripted answer is enough
    async with AsyncAgentClient(path) as client:
        with pytest.raises(error) as info:
            await client.run_kernel("k", x=np.zeros(2))
    assert info.value.code == code.name and f"scripted {code.name}" in str(info.value)
    assert isinstance(info.value.__cause__, grpc.RpcError)

    servicer.script["RunKernel"] = [code]

    def sync() -> PerfpilotError:
        with AgentClient(path) as c, pytest.raises(error) as info:
            c.run_kernel("k", x=np.zeros(2))
        return info.value

    assert isinstance((await asyncio.to_thread(sync)).__cause__, grpc.RpcError)


async def test_errors_from_the_real_agent(agent: Agent) -> None:
    async with AsyncAgentClient(agent.app.socket_path) as client:
        with pytest.raises(InvalidArgument, match="reserved for kernel results"):
            await client.cache_put("kernel/x", b"v")
        with pytest.raises(ValueError):  # InvalidArgument is also a ValueError
            await client.cache_get("")
        events = client.watch_events([99])  # type: ignore[list-item] # deliberately not an EventType
        with pytest.raises(InvalidArgument, match="not a known event type"):
            await events.__anext__()
    async with AsyncAgentClient(f"127.0.0.1:{agent.app.health_port}") as tcp:
        with pytest.raises(Unauthenticated, match="control calls go to the TLS control port"):
            await tcp.stats()   # the plaintext port is for probes


async def test_overloaded_when_the_kernel_queue_is_full(make_agent: MakeAgent) -> None:
    pools = FakePools()
    agent = await make_agent(pools=pools, initial_config={"pools": {"maxQueue": 1, "batchSize": 1}})
    pools.gate.clear()
    async with AsyncAgentClient(agent.app.socket_path) as client:
        args: dict[str, Any] = {"query": np.ones((1, 3), np.float32), "matrix": np.ones((4, 3), np.float32), "k": 1}
        held = asyncio.create_task(client.run_kernel("cosine_topk", **args))
        await asyncio.wait_for(pools.wait_busy(1), 5)
        with pytest.raises(Overloaded, match="pools.maxQueue=1"):
            await client.run_kernel("cosine_topk", **args)
        pools.gate.set()
        assert set(await held) == {"indices", "scores"}


async def test_wait_ready_is_bounded_when_no_sidecar_listens(sock_dir: str) -> None:
    path = f"{sock_dir}/nobody.sock"
    with pytest.raises(SidecarUnavailable, match=r"not ready after 0.3s: no answer"):
        await AsyncAgentClient.connect(path, wait=0.3)

    def sync() -> None:
        with pytest.raises(SidecarUnavailable, match=r"not ready after 0.3s: no answer"):
            AgentClient.connect(path, wait=0.3)

    await asyncio.to_thread(sync)


async def test_wait_ready_waits_for_warm_kernels(make_agent: MakeAgent) -> None:
    pools = FakePools()
    pools.start_gate.clear()  # hold the warm-up: the agent answers but is STARTING
    agent = await make_agent(pools=pools, ready=False, initial_config={"kernels": {"warm": ["weighted_mean"]}})
    path = agent.app.socket_path
    async with AsyncAgentClient(path) as client:
        assert (await client.wait_ready(5, warm=False)).state == pb.AGENT_STATE_STARTING
        with pytest.raises(SidecarUnavailable, match="STARTING .warm kernels still compiling"):
            await client.wait_ready(0.3)
        waiting = asyncio.create_task(client.wait_ready(30))
        pools.start_gate.set()
        assert (await waiting).state == pb.AGENT_STATE_READY

    def sync() -> int:
        client = AgentClient.connect(path, wait=30)
        try:
            return client.heartbeat().state
        finally:
            client.close()

    assert await asyncio.to_thread(sync) == pb.AGENT_STATE_READY


async def test_wait_ready_succeeds_when_the_sidecar_starts_later(make_agent: MakeAgent, sock_dir: str) -> None:
    path = f"{sock_dir}/late.sock"
    async with AsyncAgentClient(path) as client:
        waiting = asyncio.create_task(client.wait_ready(30))
        await asyncio.sleep(0)  # let the first attempt fail against the missing socket
        await make_agent(socket_path=path)
        assert (await waiting).state == pb.AGENT_STATE_READY
