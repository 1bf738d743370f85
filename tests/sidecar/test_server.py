"""The Agent service end to end over the Unix socket: heartbeat, live config, stats, cache, events, health."""

from __future__ import annotations

import asyncio
import os
import struct

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.runtime.histogram import RELATIVE_ERROR, Histogram
from tests.sidecar.conftest import Agent, FakePools, MakeAgent, rpc_error


def dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def pools(**kw: int) -> pb.PoolsConfig:
    base = dict(process_workers=2, thread_workers=4, max_queue=100, batch_size=1)
    base.update(kw)
    return pb.PoolsConfig(**base, batch_wait=dur(0.005))


async def test_heartbeat_fields(agent: Agent) -> None:
    r = await agent.stub.Heartbeat(pb.HeartbeatRequest(sequence=42))
    assert r.sequence == 42
    assert r.state == pb.AGENT_STATE_READY
    assert r.agent.pid == os.getpid() and r.agent.alive and r.agent.rss_bytes > 0
    assert r.uptime_seconds >= 0 and r.time_unix_nano > 0
    assert r.generation == 0 and r.kernels_ready
    assert list(r.workers) == [] and r.queue_depth == 0 and r.kernels_in_flight == 0
    r2 = await agent.stub.Heartbeat(pb.HeartbeatRequest(sequence=43))
    assert r2.sequence == 43 and r2.uptime_seconds >= r.uptime_seconds
    stats = await agent.stub.GetStats(pb.GetStatsRequest())
    assert stats.heartbeat_latency.count == 2  # the agent timed both heartbeats


async def test_configure_applies_the_operators_generation_and_emits_events(agent: Agent) -> None:
    call, nxt = await agent.watch(pb.EVENT_TYPE_CONFIG_APPLIED)
    cfg = pb.AgentConfig(pools=pools(max_queue=7), cache=pb.CacheConfig(ttl=dur(30), max_entries=5))
    r = await agent.control.Configure(pb.ConfigureRequest(generation=5, config=cfg))
    assert (r.applied_generation, r.applied) == (5, True)
    assert r.config.pools.max_queue == 7 and r.config.cache.max_entries == 5
    assert r.config.heartbeat.interval.seconds == 5  # untouched section keeps its default
    batch = await nxt()
    assert [e.type for e in batch.events] == [pb.EVENT_TYPE_CONFIG_APPLIED]
    assert batch.events[0].generation == 5 and batch.events[0].config.pools.max_queue == 7
    assert agent.app.cache.max_entries == 5 and agent.app.runner.admission.limit == 7

    # same generation again: idempotent, nothing changes, no event
    r = await agent.control.Configure(pb.ConfigureRequest(generation=5, config=pb.AgentConfig(pools=pools(max_queue=9))))
    assert (r.applied_generation, r.applied) == (5, False) and r.config.pools.max_queue == 7
    # a lower generation from the operator (Configure is operator-only) applies: it is the profile's
    r = await agent.control.Configure(pb.ConfigureRequest(generation=3, config=pb.AgentConfig(pools=pools(max_queue=3))))
    assert (r.applied_generation, r.applied) == (3, True) and agent.app.runner.admission.limit == 3
    # newer generation: applied
    r = await agent.control.Configure(pb.ConfigureRequest(generation=6, config=pb.AgentConfig(pools=pools(max_queue=8))))
    assert (r.applied_generation, r.applied) == (6, True)
    batch = await nxt()
    assert [e.generation for e in batch.events] == [3]  # one event per applied generation; the repeat emitted none
    batch = await nxt()
    assert [e.generation for e in batch.events] == [6]
    got = await agent.stub.GetConfig(pb.GetConfigRequest())
    assert got.generation == 6 and got.config.pools.max_queue == 8
    call.cancel()


async def test_configure_resizes_pool_and_reports_it(make_agent: MakeAgent) -> None:
    agent = await make_agent(initial_config={"kernels": {"warm": ["cosine_topk"]}})
    pool = agent.pools.created[0]
    assert pool.started_with == ["cosine_topk"]
    call, nxt = await agent.watch(pb.EVENT_TYPE_POOL_RESIZED)
    await agent.control.Configure(pb.ConfigureRequest(generation=1, config=pb.AgentConfig(pools=pools(process_workers=3))))
    batch = await nxt()
    assert batch.events[0].attributes["workers"] == "3" and batch.events[0].attributes["previous"] == "2"
    assert pool.resized == [3]
    call.cancel()


async def test_zero_process_workers_stops_the_pool_and_refuses_kernels(make_agent: MakeAgent) -> None:
    """processWorkers 0 (the CRD's heartbeat-only setting): the pool goes, RunKernel says why,
    heartbeats go on; 1 brings kernels back."""
    agent = await make_agent(initial_config={"kernels": {"warm": ["cosine_topk"]}})
    pool = agent.pools.created[0]
    call, nxt = await agent.watch(pb.EVENT_TYPE_POOL_RESIZED)
    await agent.control.Configure(pb.ConfigureRequest(generation=1, config=pb.AgentConfig(
        pools=pools(process_workers=0))))
    batch = await nxt()
    call.cancel()
    assert batch.events[0].attributes["workers"] == "0"
    assert pool.closed and agent.app.runner.pool is None
    f64 = pb.DTYPE_FLOAT64
    req = pb.RunKernelRequest(kernel="weighted_mean", inputs={
        "values": pb.Tensor(dtype=f64, shape=[2, 1], raw=struct.pack("<2d", 1.0, 3.0)),
        "weights": pb.Tensor(dtype=f64, shape=[2], raw=struct.pack("<2d", 1.0, 1.0))})
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await agent.stub.RunKernel(req, timeout=5)
    code, details = rpc_error(exc)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "processWorkers is 0" in details
    await agent.heartbeat_ok()
    await agent.control.Configure(pb.ConfigureRequest(generation=2, config=pb.AgentConfig(
        pools=pools(process_workers=1))))
    assert (await agent.app.runner.ensure_pool()) is agent.pools.created[-1] and len(agent.pools.created) == 2


async def test_health_not_serving_until_warm_kernels_compiled(make_agent: MakeAgent) -> None:
    pools_ = FakePools()
    pools_.start_gate.clear()  # hold the pool's warm-up
    agent = await make_agent(pools=pools_, ready=False, initial_config={"kernels": {"warm": ["weighted_mean"]}})
    health = health_pb2_grpc.HealthStub(agent.channel)
    r = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING
    hb = await agent.heartbeat_ok()  # heartbeats work while warming
    assert hb.state == pb.AGENT_STATE_STARTING and not hb.kernels_ready
    pools_.start_gate.set()
    await asyncio.wait_for(agent.app.wait_ready(), 5)
    for service in ("", "perfpilot.v1.Agent"):
        r = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING


async def test_record_timings_and_stats(agent: Agent) -> None:
    a = [0.001 * i for i in range(1, 101)]
    b = [0.0005, 0.2, 3.0]
    await agent.stub.RecordTimings(pb.RecordTimingsRequest(ops=[
        pb.OpObservations(op="llm.call", durations_seconds=a, errors=4),
        pb.OpObservations(op="db", durations_seconds=b),
    ]))
    r = await agent.stub.RecordTimings(pb.RecordTimingsRequest(ops=[pb.OpObservations(op="db", durations_seconds=[0.01])]))
    assert r.accepted == 1
    s = await agent.stub.GetStats(pb.GetStatsRequest())
    ops = {o.op: o for o in s.ops}
    assert set(ops) == {"llm.call", "db"}
    assert ops["llm.call"].latency.count == 100 and ops["llm.call"].errors == 4
    assert ops["db"].latency.count == 4
    assert s.app_total.latency.count == 104 and s.app_total.errors == 4
    assert abs(ops["llm.call"].latency.sum - sum(a)) < 1e-9
    # p50 of 1..100 ms is 50 ms; the bucket estimate is within the documented RELATIVE_ERROR (18.9 %)
    assert abs(ops["llm.call"].quantiles.p50 - 0.050) / 0.050 <= RELATIVE_ERROR
    assert abs(ops["llm.call"].quantiles.p99 - 0.099) / 0.099 <= RELATIVE_ERROR
    # GetStats histograms merge by adding counts: two pods' op histograms == the histogram of the union
    h1, h2 = Histogram.from_proto(ops["llm.call"].latency), Histogram.from_proto(ops["db"].latency)
    h1.merge(h2)
    union = Histogram()
    union.observe_many(a + b + [0.01])
    assert h1.counts == union.counts and h1.count == union.count
    assert list(s.app_total.latency.counts) == union.counts


async def test_cache_rpcs(agent: Agent) -> None:
    assert (await agent.stub.CacheGet(pb.CacheGetRequest(key="u/1"))).found is False
    await agent.stub.CachePut(pb.CachePutRequest(key="u/1", value=b"one"))
    await agent.stub.CachePut(pb.CachePutRequest(key="u/2", value=b"two", ttl=dur(60)))
    await agent.stub.CachePut(pb.CachePutRequest(key="v/1", value=b"x"))
    got = await agent.stub.CacheGet(pb.CacheGetRequest(key="u/2"))
    assert got.found and got.value == b"two" and 0 < got.ttl_remaining.ToNanoseconds() <= 60e9
    call, nxt = await agent.watch(pb.EVENT_TYPE_CACHE_CLEARED)
    r = await agent.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix="u/"))
    assert r.removed == 2
    ev = (await nxt()).events[0]
    assert ev.attributes["removed"] == "2" and ev.attributes["prefix"] == "u/"
    assert (await agent.stub.CacheGet(pb.CacheGetRequest(key="u/1"))).found is False
    assert (await agent.stub.CacheGet(pb.CacheGetRequest(key="v/1"))).value == b"x"
    s = await agent.stub.GetStats(pb.GetStatsRequest())
    assert (s.cache.hits, s.cache.misses, s.cache.invalidations, s.cache.entries) == (2, 2, 2, 1)
    call.cancel()


async def test_slow_watcher_drops_oldest_and_is_told(make_agent: MakeAgent) -> None:
    agent = await make_agent(event_buffer=10)
    call, nxt = await agent.watch(pb.EVENT_TYPE_CUSTOM)
    for i in range(25):  # published synchronously on the loop: the watcher cannot read in between
        agent.app.events.publish(pb.EVENT_TYPE_CUSTOM, f"e{i}")
    batch = await nxt()
    assert batch.dropped == 15
    assert [e.message for e in batch.events] == [f"e{i}" for i in range(15, 25)]
    seqs = [e.sequence for e in batch.events]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == 9
    await agent.heartbeat_ok()
    call.cancel()


async def test_watch_replays_since_sequence_and_batches(agent: Agent) -> None:
    first = agent.app.events.publish(pb.EVENT_TYPE_CUSTOM, "a")
    agent.app.events.publish(pb.EVENT_TYPE_CUSTOM, "b")
    agent.app.events.publish(pb.EVENT_TYPE_CUSTOM, "c")
    call = agent.stub.WatchEvents(pb.WatchEventsRequest(since_sequence=first.sequence, max_batch=1))
    it = call.__aiter__()
    batches = [await asyncio.wait_for(it.__anext__(), 5) for _ in range(2)]
    assert [[e.message for e in b.events] for b in batches] == [["b"], ["c"]]  # max_batch=1
    call.cancel()


async def test_event_stream_ends_on_shutdown(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    call, nxt = await agent.watch()
    stop = asyncio.create_task(agent.app.stop(grace=1.0))
    batch = await nxt()
    assert [e.type for e in batch.events] == [pb.EVENT_TYPE_SHUTTING_DOWN]
    with pytest.raises(StopAsyncIteration):
        await nxt()
    await stop
    assert not os.path.exists(agent.app.socket_path)


async def test_unknown_method_is_unimplemented(agent: Agent) -> None:
    method = agent.channel.unary_unary("/perfpilot.v1.Agent/Nope")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await method(b"")
    assert rpc_error(ei)[0] == grpc.StatusCode.UNIMPLEMENTED
