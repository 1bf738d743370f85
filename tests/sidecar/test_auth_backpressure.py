"""TCP bearer-token auth and bounded admission (RESOURCE_EXHAUSTED at once, never a wait)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.server.auth import check_token
from tests.sidecar.conftest import TOKEN, Agent, FakePools, MakeAgent, rpc_error


def f32(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a, dtype="<f4")
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=a.shape, raw=a.tobytes())


def topk_request(k: int = 2) -> pb.RunKernelRequest:
    rng = np.random.default_rng(0)
    return pb.RunKernelRequest(kernel="cosine_topk", inputs={"query": f32(rng.random((1, 4))),
                                                             "matrix": f32(rng.random((8, 4)))}, params={"k": k})


async def test_tcp_open_methods_need_no_token(agent: Agent) -> None:
    stub = agent.tcp_stub()
    assert (await stub.Heartbeat(pb.HeartbeatRequest(sequence=9))).sequence == 9
    health = health_pb2_grpc.HealthStub(agent._channels[-1])
    r = await health.Check(health_pb2.HealthCheckRequest())
    assert r.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("metadata, message", [
    ((), "missing 'authorization' metadata"),
    ((("authorization", "Bearer wrong"),), "invalid bearer token"),
    ((("authorization", "Basic abc"),), "malformed 'authorization' metadata"),
    ((("authorization", "Bearer "),), "malformed 'authorization' metadata"),
    ((("authorization", f"Bearer {TOKEN}x"),), "invalid bearer token"),
])
async def test_tcp_control_calls_need_the_right_token(agent: Agent, metadata: tuple, message: str) -> None:
    stub = agent.tcp_stub()
    for call in (stub.GetStats(pb.GetStatsRequest(), metadata=metadata),
                 stub.Configure(pb.ConfigureRequest(generation=1), metadata=metadata),
                 stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix=""), metadata=metadata)):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call
        code, details = rpc_error(ei)
        assert code == grpc.StatusCode.UNAUTHENTICATED and message in details
    stream = stub.WatchEvents(pb.WatchEventsRequest(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stream.read()
    assert rpc_error(ei)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert agent.app.auth.rejected == 4
    await agent.heartbeat_ok()


async def test_tcp_with_token_and_unix_without(agent: Agent) -> None:
    authed = agent.tcp_stub(TOKEN)
    r = await authed.Configure(pb.ConfigureRequest(generation=2, config=pb.AgentConfig()))
    assert r.applied_generation == 2
    stream = authed.WatchEvents(pb.WatchEventsRequest())
    first = await stream.read()
    assert isinstance(first, pb.EventBatch)
    stream.cancel()
    # the Unix socket is trusted: no metadata needed
    assert (await agent.stub.GetStats(pb.GetStatsRequest())).generation == 2


def cache(max_entries: int) -> pb.CacheConfig:
    return pb.CacheConfig(ttl=duration_pb2.Duration(seconds=30), max_entries=max_entries)


async def test_operator_configure_over_tcp_wins_over_a_generation_pushed_ahead(agent: Agent) -> None:
    """Anything in the pod can Configure over the socket, e.g. generation 2**62; the operator
    (authenticated TCP) must still bring the sidecar back to its profile's generation."""
    ahead = await agent.stub.Configure(pb.ConfigureRequest(
        generation=2**62, config=pb.AgentConfig(cache=cache(max_entries=3))))
    assert (ahead.applied_generation, ahead.applied) == (2**62, True)
    # the socket keeps the out-of-order rule: lower generations are ignored there
    r = await agent.stub.Configure(pb.ConfigureRequest(generation=6))
    assert (r.applied_generation, r.applied) == (2**62, False)
    operator = agent.tcp_stub(TOKEN)
    r = await operator.Configure(pb.ConfigureRequest(
        generation=6, config=pb.AgentConfig(cache=cache(max_entries=9))))
    assert (r.applied_generation, r.applied) == (6, True) and r.config.cache.max_entries == 9
    assert agent.app.cache.max_entries == 9
    # a repeat of the applied generation stays a no-op, from the operator too
    r = await operator.Configure(pb.ConfigureRequest(
        generation=6, config=pb.AgentConfig(cache=cache(max_entries=4))))
    assert (r.applied_generation, r.applied) == (6, False) and agent.app.cache.max_entries == 9
    assert (await operator.GetConfig(pb.GetConfigRequest())).generation == 6


async def test_no_token_configured_refuses_tcp_control(make_agent: MakeAgent) -> None:
    agent = await make_agent(token=None)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await agent.tcp_stub("anything").GetStats(pb.GetStatsRequest())
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "no token configured" in details
    assert (await agent.tcp_stub().Heartbeat(pb.HeartbeatRequest())).state == pb.AGENT_STATE_READY


def test_check_token_unit() -> None:
    assert check_token((("authorization", "Bearer abc"),), b"abc") is None
    assert check_token((("authorization", b"bearer abc"),), b"abc") is None
    assert check_token((("x", "y"),), b"abc") is not None


async def test_full_kernel_queue_is_rejected_at_once(make_agent: MakeAgent) -> None:
    pools = FakePools()
    pools.gate.clear()  # kernel calls block in the pool until released
    agent = await make_agent(pools=pools, initial_config={"pools": {"maxQueue": 2}})
    first = [asyncio.ensure_future(agent.stub.RunKernel(topk_request())) for _ in range(2)]
    await asyncio.wait_for(pools.wait_busy(2), 5)
    assert agent.app.runner.admission.in_flight == 2
    call, nxt = await agent.watch(pb.EVENT_TYPE_OVERLOAD)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await agent.stub.RunKernel(topk_request())
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "pools.maxQueue=2" in details
    ev = (await nxt()).events[0]
    assert ev.attributes["class"] == "kernel"
    hb = await agent.heartbeat_ok()
    assert hb.kernels_in_flight == 2
    stats = await agent.stub.GetStats(pb.GetStatsRequest())
    assert stats.rejected["kernel"] == 1
    # raising the limit live admits more without a restart
    await agent.stub.Configure(pb.ConfigureRequest(generation=1, config=pb.AgentConfig(
        pools=pb.PoolsConfig(process_workers=2, thread_workers=2, max_queue=3, batch_size=1))))
    third = asyncio.ensure_future(agent.stub.RunKernel(topk_request()))
    await asyncio.wait_for(pools.wait_busy(3), 5)
    pools.gate.set()
    results = await asyncio.gather(*first, third)
    assert all(list(r.outputs["indices"].shape) == [1, 2] for r in results)
    assert agent.app.runner.admission.in_flight == 0
    call.cancel()


async def test_watchers_are_bounded(make_agent: MakeAgent) -> None:
    agent = await make_agent(max_watchers=1)
    call, _ = await agent.watch()
    second = agent.stub.WatchEvents(pb.WatchEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await second.read()
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-watchers=1" in details
    call.cancel()
