"""L1 + L2 through the real gRPC path: clients on the Unix socket of an in-process agent. Hits,
misses, fills, invalidation across clients, dependencies, stream loss and recovery, live config
change, bad input. Synchronisation waits for the L1's own event batches, never on sleeps."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import grpc
import pytest

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client import AgentClient, AsyncAgentClient
from tests.sidecar.conftest import Agent, MakeAgent, rpc_error

GEN = [0]


def l1_config(enabled: bool = True, **kw: int) -> pb.AgentConfig:
    l1 = pb.L1CacheConfig(enabled=enabled, max_entries=kw.get("max_entries", 1000),
                          max_bytes=kw.get("max_bytes", 1 << 20), max_value_bytes=kw.get("max_value_bytes", 1024))
    l1.ttl.FromSeconds(kw.get("ttl", 60))
    cache = pb.CacheConfig(max_entries=1000, l1=l1)
    cache.ttl.FromSeconds(300)
    return pb.AgentConfig(cache=cache)


def configure(agent: Agent, cfg: pb.AgentConfig) -> None:
    """The operator's push (as the servicer applies it)."""
    GEN[0] += 1
    assert agent.app.configure(GEN[0] + 100, cfg, operator=True)


class Seen:
    """Counts a client's L1 batches so a test can wait for 'the next event was applied'."""

    def __init__(self, client: AsyncAgentClient) -> None:
        self.events = 0
        self.cond = asyncio.Condition()
        original = client.l1.on_batch

        def on_batch(batch: pb.EventBatch) -> None:
            original(batch)
            self.events += sum(ev.type == pb.EVENT_TYPE_CACHE_CHANGED for ev in batch.events)
            asyncio.get_running_loop().create_task(self._notify())

        client.l1.on_batch = on_batch  # type: ignore[method-assign]

    async def _notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    async def until(self, n: int) -> None:
        async with self.cond:
            await asyncio.wait_for(self.cond.wait_for(lambda: self.events >= n), 10)


@pytest.fixture
async def clients(agent: Agent) -> AsyncIterator[tuple[AsyncAgentClient, AsyncAgentClient]]:
    configure(agent, l1_config())
    a, b = AsyncAgentClient(agent.app.socket_path), AsyncAgentClient(agent.app.socket_path)
    await a.get_config()
    await b.get_config()
    yield a, b
    await a.close()
    await b.close()


async def test_off_by_default_every_read_reaches_the_sidecar(agent: Agent) -> None:
    async with AsyncAgentClient(agent.app.socket_path) as c:
        await c.cache_put("k", b"v")
        assert [await c.cache_get("k") for _ in range(3)] == [b"v"] * 3
        assert agent.app.cache.counters.hits == 3 and len(c.l1) == 0
        for _ in range(1000):  # with L1 off the watcher drops the cache events from its subscription
            subs = agent.app.events.subscribers
            if subs and all(pb.EVENT_TYPE_CACHE_CHANGED not in s.types for s in subs):
                break
            await asyncio.sleep(0.01)
        assert [pb.EVENT_TYPE_CACHE_CHANGED in s.types for s in agent.app.events.subscribers] == [False]


async def test_hits_misses_fills_and_read_your_writes(agent: Agent, clients: tuple[AsyncAgentClient, ...]) -> None:
    a, _ = clients
    assert await a.cache_get("absent") is None          # a miss in both tiers, nothing filled
    await a.cache_put("k", b"v1")                        # write-through: L2 and this L1
    assert await a.cache_get("k") == b"v1" and agent.app.cache.counters.hits == 0   # from L1
    agent.app.cache.put("direct", b"d")                  # only in L2 (no event reaches L1 for a key it lacks)
    assert await a.cache_get("direct") == b"d" and agent.app.cache.counters.hits == 1   # miss -> L2 -> fill
    assert await a.cache_get("direct") == b"d" and agent.app.cache.counters.hits == 1   # now an L1 hit
    assert a.l1.hits == 2 and len(a.l1) == 2


async def test_large_values_stay_in_l2_only(agent: Agent, clients: tuple[AsyncAgentClient, ...]) -> None:
    a, _ = clients
    await a.cache_put("big", b"x" * 2000)                # over maxValueBytes (1024)
    assert await a.cache_get("big") == b"x" * 2000 and "big" not in a.l1._cache
    assert agent.app.cache.counters.hits == 1


async def test_a_write_by_another_client_drops_the_copy(agent: Agent, clients: tuple[AsyncAgentClient, ...]) -> None:
    a, b = clients
    seen = Seen(a)
    await a.cache_put("k", b"v1")
    await seen.until(1)                                  # a's own write event (already reflected)
    assert await a.cache_get("k") == b"v1"
    await b.cache_put("k", b"v2")
    await seen.until(2)
    assert "k" not in a.l1._cache and await a.cache_get("k") == b"v2"
    await b.cache_invalidate("k")                        # a prefix invalidation
    await seen.until(3)
    assert await a.cache_get("k") is None
    assert a.l1.staleness or a.l1.take_stats() is not None


async def test_dependency_and_tag_invalidation_reach_every_l1(agent: Agent,
                                                              clients: tuple[AsyncAgentClient, ...]) -> None:
    a, b = clients
    seen = Seen(a)
    await a.cache_put("user/1", b"u")
    await a.cache_put("profile/1", b"p", depends_on=["user/1"], tags=["profiles"])
    await a.cache_put("feed/1", b"f", depends_on_prefixes=["user/"])
    await a.cache_put("page/1", b"x", tags=["pages"])
    await seen.until(4)
    assert await b.cache_get("profile/1") == b"p" and await b.cache_get("feed/1") == b"f"  # b fills with deps
    seen_b = Seen(b)
    await a.cache_put("user/1", b"u2")                   # the dependency changes
    await seen.until(5)
    await seen_b.until(1)
    for c in (a, b):
        assert "profile/1" not in c.l1._cache and "feed/1" not in c.l1._cache
    assert "profile/1" not in agent.app.cache and "feed/1" not in agent.app.cache
    assert agent.app.cache.counters.dependency_invalidations == 2
    assert await b.cache_get("page/1") == b"x"
    assert await a.cache_invalidate(tags=["pages"]) == 1
    await seen_b.until(2)
    assert "page/1" not in b.l1._cache and await b.cache_get("page/1") is None


async def test_stream_loss_stops_l1_and_recovery_resyncs(make_agent: MakeAgent, sock_dir: str) -> None:
    path = f"{sock_dir}/restart.sock"
    agent = await make_agent(socket_path=path)
    configure(agent, l1_config())
    c = AsyncAgentClient(path)
    try:
        await c.cache_put("k", b"v")
        assert c.l1.serving() and await c.cache_get("k") == b"v"
        await agent.app.stop(grace=0.5)                  # the sidecar goes away: the stream breaks
        for _ in range(500):
            if not c.l1.serving():
                break
            await asyncio.sleep(0.01)  # the watcher task notices the broken stream
        assert not c.l1.serving() and len(c.l1) == 0 and c.l1.resyncs == 1
        again = await make_agent(socket_path=path)       # back, with an empty L2
        configure(again, l1_config())
        assert await c.cache_get("k") is None            # not the pre-outage value
        for _ in range(1000):
            if c.l1.serving():
                break
            await asyncio.sleep(0.01)  # reconnect backoff
        assert c.l1.serving()
        await c.cache_put("k", b"v2")
        assert await c.cache_get("k") == b"v2" and c.l1.hits >= 2
    finally:
        await c.close()


async def test_live_config_change_turns_l1_off_and_on(agent: Agent, clients: tuple[AsyncAgentClient, ...]) -> None:
    a, _ = clients
    await a.cache_put("k", b"v")
    assert await a.cache_get("k") == b"v" and a.l1.hits == 1
    changed = asyncio.Event()
    await a.on_config_change(lambda cfg: changed.set())
    configure(agent, l1_config(enabled=False))
    await asyncio.wait_for(changed.wait(), 10)
    assert len(a.l1) == 0 and not a.l1.serving()
    assert await a.cache_get("k") == b"v" and a.l1.hits == 1      # from L2 now
    assert a.l1.wanted() is False
    changed.clear()
    configure(agent, l1_config(ttl=30, max_entries=1))
    await asyncio.wait_for(changed.wait(), 10)
    assert a.l1.settings.ttl == 30 and a.l1.settings.max_entries == 1
    for _ in range(1000):  # the watcher resubscribes with the cache events before L1 serves again
        if a.l1.serving():
            break
        await asyncio.sleep(0.01)
    assert a.l1.serving()
    await a.cache_get("k")
    assert await a.cache_get("k") == b"v" and a.l1.hits == 2


async def test_l1_counters_reach_getstats(agent: Agent, clients: tuple[AsyncAgentClient, ...]) -> None:
    a, _ = clients
    await a.cache_put("k", b"v")
    for _ in range(5):
        await a.cache_get("k")
    await a.cache_get("nope")
    await a.flush()
    stats = await a.stats()
    assert (stats.cache.l1.hits, stats.cache.l1.misses) == (5, 1)
    assert stats.cache.hits == 0 and stats.cache.misses == 1       # cache_hit_ratio: what reached the sidecar


async def test_sync_client_l1_across_threads(agent: Agent) -> None:
    configure(agent, l1_config())

    def app() -> tuple[bytes | None, bytes | None, int]:
        with AgentClient(agent.app.socket_path) as a, AgentClient(agent.app.socket_path) as b:
            a.cache_put("k", b"v1")
            first = a.cache_get("k")
            hits = a.l1.hits
            b.cache_put("k", b"v2")
            for _ in range(1000):  # the watcher thread applies b's event
                if "k" not in a.l1._cache:
                    break
                threading_wait(0.005)
            return first, a.cache_get("k"), hits

    first, second, hits = await asyncio.to_thread(app)
    assert (first, second, hits) == (b"v1", b"v2", 1)


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


@pytest.mark.parametrize("req, field", [
    (pb.CachePutRequest(key="k", value=b"v", dependencies=pb.CacheDependencies(keys=[f"d{i}" for i in range(33)])),
     "dependencies.keys has 33 entries"),
    (pb.CachePutRequest(key="k", value=b"v", dependencies=pb.CacheDependencies(tags=["t" * 257])),
     "dependencies.tags[0] must be 1..256 bytes"),
    (pb.CachePutRequest(key="k", value=b"v", dependencies=pb.CacheDependencies(prefixes=[""])),
     "dependencies.prefixes[0] must be 1..1024 bytes"),
    (pb.CacheInvalidateRequest(keys=["k"] * 1001), "keys has 1001 entries"),
    (pb.CacheInvalidateRequest(tags=["x" * 300]), "tags[0] must be 1..256 bytes"),
    (pb.RecordTimingsRequest(cache=pb.ClientCacheStats(staleness_seconds=[math.nan])),
     "cache.stalenessSeconds[0] must be finite"),
    (pb.RecordTimingsRequest(cache=pb.ClientCacheStats(staleness_seconds=[0.0] * 10_001)),
     "at most 10000 per call"),
])
async def test_bad_cache_input_is_invalid_argument(agent: Agent, req: object, field: str) -> None:
    method = {pb.CachePutRequest: agent.stub.CachePut, pb.CacheInvalidateRequest: agent.stub.CacheInvalidate,
              pb.RecordTimingsRequest: agent.stub.RecordTimings}[type(req)]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await method(req, timeout=5)
    code, details = rpc_error(exc)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    assert agent.app.monitor.l1.hits == 0
    await agent.heartbeat_ok()


@pytest.mark.parametrize("seconds, nanos", [(0, 1_000_000), (61, 0), (-1, 0)])
async def test_bad_keepalive_is_invalid_argument(agent: Agent, seconds: int, nanos: int) -> None:
    req = pb.WatchEventsRequest()
    req.keepalive.seconds, req.keepalive.nanos = seconds, nanos
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in agent.stub.WatchEvents(req, timeout=5):
            pass
    assert rpc_error(exc)[0] == grpc.StatusCode.INVALID_ARGUMENT and "keepalive" in rpc_error(exc)[1]


async def test_keepalive_sends_empty_batches_on_a_quiet_stream(agent: Agent) -> None:
    req = pb.WatchEventsRequest(types=[pb.EVENT_TYPE_CACHE_CHANGED])
    req.keepalive.FromMilliseconds(20)
    call = agent.stub.WatchEvents(req)
    it = call.__aiter__()
    batches = [await asyncio.wait_for(it.__anext__(), 5) for _ in range(3)]
    call.cancel()
    assert all(not b.events for b in batches)
