"""Operator Configure semantics and bounded admission (RESOURCE_EXHAUSTED at once, never a wait).

Who may call what: test_mtls.py."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2

from perfpilot.v1 import agent_pb2 as pb
from tests.sidecar.conftest import Agent, FakePool, FakePools, MakeAgent, rpc_error


def f32(a: np.ndarray) -> pb.Tensor:
    a = np.ascontiguousarray(a, dtype="<f4")
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=a.shape, raw=a.tobytes())


def topk_request(k: int = 2) -> pb.RunKernelRequest:
    rng = np.random.default_rng(0)
    return pb.RunKernelRequest(kernel="cosine_topk", inputs={"query": f32(rng.random((1, 4))),
                                                             "matrix": f32(rng.random((8, 4)))}, params={"k": k})


def cache(max_entries: int) -> pb.CacheConfig:
    return pb.CacheConfig(ttl=duration_pb2.Duration(seconds=30), max_entries=max_entries)


async def test_operator_configure_applies_lower_generations(agent: Agent) -> None:
    """Configure is operator-only (the socket refuses it): the operator's generation applies even
    when lower than the one the sidecar runs (a profile re-created, or a sidecar pushed ahead by
    an earlier operator), so the sidecar always comes back to its profile's config."""
    operator = agent.control
    ahead = await operator.Configure(pb.ConfigureRequest(
        generation=2**62, config=pb.AgentConfig(cache=cache(max_entries=3))))
    assert (ahead.applied_generation, ahead.applied) == (2**62, True)
    r = await operator.Configure(pb.ConfigureRequest(
        generation=6, config=pb.AgentConfig(cache=cache(max_entries=9))))
    assert (r.applied_generation, r.applied) == (6, True) and r.config.cache.max_entries == 9
    assert agent.app.cache.max_entries == 9
    # a repeat of the applied generation stays a no-op
    r = await operator.Configure(pb.ConfigureRequest(
        generation=6, config=pb.AgentConfig(cache=cache(max_entries=4))))
    assert (r.applied_generation, r.applied) == (6, False) and agent.app.cache.max_entries == 9
    assert (await operator.GetConfig(pb.GetConfigRequest())).generation == 6


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
    await agent.control.Configure(pb.ConfigureRequest(generation=1, config=pb.AgentConfig(
        pools=pb.PoolsConfig(process_workers=2, thread_workers=2, max_queue=3, batch_size=1))))
    third = asyncio.ensure_future(agent.stub.RunKernel(topk_request()))
    await asyncio.wait_for(pools.wait_busy(3), 5)
    pools.gate.set()
    results = await asyncio.gather(*first, third)
    assert all(list(r.outputs["indices"].shape) == [1, 2] for r in results)
    assert agent.app.runner.admission.in_flight == 0
    call.cancel()


async def test_full_shared_memory_in_the_pool_is_resource_exhausted(make_agent: MakeAgent,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's StagingFailed (its /dev/shm is full) is our limit, not the caller's mistake nor a
    crash: RESOURCE_EXHAUSTED naming the setting to raise, and the agent keeps serving."""
    from perfpilot_agent.kernels.errors import StagingFailed

    agent = await make_agent()

    async def full(self: FakePool, name: str, inputs: object, params: object) -> None:
        raise StagingFailed(f"{name}: shared memory for the call could not be allocated: "
                            "[Errno 28] No space left on device")

    with monkeypatch.context() as m:
        m.setattr(FakePool, "run", full)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await agent.stub.RunKernel(topk_request())
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "cosine_topk: shared memory for the call could not be allocated" in details
    assert "No space left on device" in details and "spec.resources.sharedMemory" in details
    out = await agent.stub.RunKernel(topk_request())
    assert list(out.outputs["indices"].shape) == [1, 2]
    assert agent.app.runner.admission.in_flight == 0


async def test_watchers_are_bounded(make_agent: MakeAgent) -> None:
    agent = await make_agent(max_watchers=1)
    call, _ = await agent.watch()
    second = agent.stub.WatchEvents(pb.WatchEventsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await second.read()
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-watchers=1" in details
    call.cancel()
