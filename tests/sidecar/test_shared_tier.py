"""The shared cache tier against a real redis-server (Debian's package, started here on loopback).

Two in-process sidecar replicas (each a full AgentApp with its own gRPC socket) share one Redis,
as the replicas of one profile do: a value computed in one is a hit in the other, an invalidation
or overwrite in one drops it in both (and reaches the other's event stream, which L1 clients
watch), and killing Redis keeps both serving from their local tiers until it is back.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis

from e2e.harness import redisserver
from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.app import AgentApp
from perfpilot_contract.liveconfig import agent_config

from .conftest import Agent, MakeAgent, rpc_error

pytestmark = pytest.mark.skipif(redisserver.binary() is None,
                                reason="redis-server is not installed (make debs installs Debian's redis-server)")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[redisserver.RedisServer]:
    with redisserver.RedisServer(redisserver.port_for(0)) as server:
        yield server


@pytest.fixture
def outage_server() -> Iterator[redisserver.RedisServer]:
    """A server of the test's own, for tests that kill it."""
    with redisserver.RedisServer(redisserver.port_for(1)) as server:
        yield server


async def until(cond: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll `cond` (the tier works in the background) until it holds; fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = cond()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def shared_config(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"cache": {"shared": {"url": url, "keyPrefix": prefix, **extra}}}


async def replicas(make_agent: MakeAgent, url: str, prefix: str, n: int = 2, **extra: Any) -> list[Agent]:
    extra.setdefault("timeout", "2s")  # the default 50ms is for a cluster; this machine may be busy
    agents = [await make_agent(initial_config=shared_config(url, prefix, **extra)) for _ in range(n)]
    for a in agents:
        await until(lambda a=a: a.app.shared.view().up, "the shared tier to come up")
    return agents


async def found(agent: Agent, key: str) -> bytes | None:
    resp = await agent.stub.CacheGet(pb.CacheGetRequest(key=key), timeout=5)
    return resp.value if resp.found else None


def flushed(app: AgentApp) -> bool:
    return app.shared.view().pending == 0


async def test_value_computed_in_one_replica_is_a_hit_in_the_other(make_agent: MakeAgent,
                                                                   redis_server: redisserver.RedisServer) -> None:
    a, b = await replicas(make_agent, redis_server.url, "hit:")
    assert await found(b, "q1") is None  # nobody has it yet: a miss in both tiers
    await a.stub.CachePut(pb.CachePutRequest(key="q1", value=b"result", ttl={"seconds": 60}), timeout=5)
    await until(lambda: flushed(a.app), "the write-through to be sent")
    resp = await b.stub.CacheGet(pb.CacheGetRequest(key="q1"), timeout=5)
    assert resp.found and resp.value == b"result"
    assert 55 < resp.ttl_remaining.seconds <= 60  # the writer's TTL travelled with the value
    stats = await b.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    assert (stats.shared_cache.configured, stats.shared_cache.up, stats.shared_cache.hits) == (True, True, 1)
    assert stats.shared_cache.misses == 1
    assert await found(b, "q1") == b"result"  # now a local (L2) hit: the shared tier is not asked again
    stats = await b.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    assert stats.shared_cache.hits == 1 and stats.cache.hits == 1
    r = Redis.from_url(redis_server.url)
    try:
        assert await r.get("hit:q1") == b"result" and 0 < await r.pttl("hit:q1") <= 60_000
    finally:
        await r.aclose()


async def test_invalidation_in_one_drops_it_in_both_and_tells_the_others_l1(
        make_agent: MakeAgent, redis_server: redisserver.RedisServer) -> None:
    a, b = await replicas(make_agent, redis_server.url, "inv:")
    for key in ("user/1/a", "user/1/b", "user/2/a"):
        await a.stub.CachePut(pb.CachePutRequest(key=key, value=key.encode()), timeout=5)
    await until(lambda: flushed(a.app), "the writes to be sent")
    for key in ("user/1/a", "user/1/b", "user/2/a"):
        assert await found(b, key) == key.encode()  # filled b's own cache
    call, nxt = await b.watch(pb.EVENT_TYPE_CACHE_CHANGED)  # what b's apps' L1 caches follow
    await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix="user/1/"), timeout=5)
    batch = await nxt()
    while not any("user/1/" in e.cache.prefixes for e in batch.events):
        batch = await nxt()
    call.cancel()
    assert await found(b, "user/1/a") is None and await found(a, "user/1/b") is None
    assert await found(b, "user/2/a") == b"user/2/a"  # outside the prefix: kept
    r = Redis.from_url(redis_server.url)
    try:
        assert sorted(await r.keys("inv:*")) == [b"inv:user/2/a"]
    finally:
        await r.aclose()
    stats = await b.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    assert stats.shared_cache.invalidations_received >= 1


async def test_an_overwrite_in_one_replica_replaces_the_value_in_the_other(
        make_agent: MakeAgent, redis_server: redisserver.RedisServer) -> None:
    a, b = await replicas(make_agent, redis_server.url, "ow:")
    await a.stub.CachePut(pb.CachePutRequest(key="k", value=b"v1"), timeout=5)
    await until(lambda: flushed(a.app), "the write to be sent")
    assert await found(b, "k") == b"v1"
    await a.stub.CachePut(pb.CachePutRequest(key="k", value=b"v2"), timeout=5)
    await until(lambda: "k" not in b.app.cache, "b to drop its stale copy")
    assert await found(b, "k") == b"v2"


async def test_glob_characters_in_a_prefix_are_literal(make_agent: MakeAgent,
                                                       redis_server: redisserver.RedisServer) -> None:
    """Hostile prefixes: '*' invalidates keys starting with '*', not every key in Redis."""
    a, b = await replicas(make_agent, redis_server.url, "glob:")
    for key in ("*x", "plain", "[a]b", "?q"):
        await a.stub.CachePut(pb.CachePutRequest(key=key, value=b"1"), timeout=5)
    await until(lambda: flushed(a.app), "the writes to be sent")
    for prefix in ("*", "[a]", "?"):
        await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix=prefix), timeout=5)
    await until(lambda: flushed(a.app), "the invalidations to be sent")
    r = Redis.from_url(redis_server.url)
    try:
        assert sorted(await r.keys("glob:*")) == [b"glob:plain"]
    finally:
        await r.aclose()
    assert await found(b, "plain") == b"1"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix="p" * 2000), timeout=5)
    assert rpc_error(info)[0] == grpc.StatusCode.INVALID_ARGUMENT
    await a.heartbeat_ok()


async def test_redis_outage_keeps_the_app_served_then_recovers(
        make_agent: MakeAgent, outage_server: redisserver.RedisServer) -> None:
    a, b = await replicas(make_agent, outage_server.url, "out:")
    await a.stub.CachePut(pb.CachePutRequest(key="before", value=b"old"), timeout=5)
    await until(lambda: flushed(a.app), "the write to be sent")
    assert await found(b, "before") == b"old"

    outage_server.kill()
    await until(lambda: not a.app.shared.view().up and not b.app.shared.view().up, "both replicas to see the outage")
    # the app is served by the local tiers: every call succeeds
    await a.stub.CachePut(pb.CachePutRequest(key="during", value=b"local"), timeout=5)
    assert await found(a, "during") == b"local"
    assert await found(b, "during") is None  # a miss, not an error
    await a.stub.CachePut(pb.CachePutRequest(key="before", value=b"new"), timeout=5)  # b cannot hear it
    await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix="gone/"), timeout=5)
    stats = await b.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    sc = stats.shared_cache
    assert sc.configured and not sc.up and sc.last_error and sc.down_since_unix_nano > 0 and sc.skipped >= 1
    assert (await a.stub.GetStats(pb.GetStatsRequest(), timeout=5)).shared_cache.writes_dropped == 2
    await a.heartbeat_ok()

    outage_server.start()
    await until(lambda: a.app.shared.view().up and b.app.shared.view().up, "both replicas to reconnect", 20)
    await until(lambda: flushed(a.app), "a's journal to be replayed")
    # b resynced (it may have missed a's overwrite): its stale "before" is gone; the journal replay
    # deleted a's keys written during the outage in Redis, so nobody reads an old value back
    assert await found(b, "before") is None
    stats = await b.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    assert stats.shared_cache.resyncs == 1 and stats.shared_cache.up
    await a.stub.CachePut(pb.CachePutRequest(key="after", value=b"shared again"), timeout=5)
    await until(lambda: flushed(a.app), "the write to be sent")
    assert await found(b, "after") == b"shared again"


async def test_password_from_the_environment_and_errors_that_say_why(make_agent: MakeAgent) -> None:
    with redisserver.RedisServer(redisserver.port_for(2), password="s3cret") as server:
        shared = {"credentialsSecret": {"name": "redis-auth", "key": "password"}}
        good = await make_agent(initial_config=shared_config(server.url, "pw:", **shared),
                                cache_shared_password="s3cret")
        await until(lambda: good.app.shared.view().up, "the authenticated tier to come up")
        missing = await make_agent(initial_config=shared_config(server.url, "pw:", **shared))
        await until(lambda: missing.app.shared.view().last_error != "", "the missing password to be reported")
        stats = await missing.stub.GetStats(pb.GetStatsRequest(), timeout=5)
        assert not stats.shared_cache.up
        assert "redis-auth/password is not in this sidecar's environment" in stats.shared_cache.last_error
        await missing.stub.CachePut(pb.CachePutRequest(key="k", value=b"v"), timeout=5)  # still served
        assert await found(missing, "k") == b"v"


async def test_configure_turns_the_tier_on_and_off_live_and_refuses_bad_fields(
        make_agent: MakeAgent, redis_server: redisserver.RedisServer) -> None:
    agent = await make_agent()
    assert not agent.app.shared.view().configured
    stub = agent.control
    await stub.Configure(pb.ConfigureRequest(generation=1, config=agent_config(shared_config(redis_server.url, "live:"))),
                         timeout=5)
    await until(lambda: agent.app.shared.view().up, "the tier configured live to come up")
    got = await stub.GetConfig(pb.GetConfigRequest(), timeout=5)
    assert got.config.cache.shared.url == redis_server.url and got.config.cache.shared.key_prefix == "live:"
    bad = agent_config(shared_config(redis_server.url, "live:"))
    bad.cache.shared.url = "redis://admin:hunter2@redis:6379"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Configure(pb.ConfigureRequest(generation=2, config=bad), timeout=5)
    code, details = rpc_error(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "cache.shared.url" in details and "hunter2" not in details
    bad.cache.shared.url = redis_server.url
    bad.cache.shared.max_pending_writes = 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Configure(pb.ConfigureRequest(generation=2, config=bad), timeout=5)
    assert rpc_error(info) == (grpc.StatusCode.INVALID_ARGUMENT,
                               "cache.shared.maxPendingWrites must be between 1 and 1000000, got 0")
    assert agent.app.shared.view().up  # the refused configs changed nothing
    await stub.Configure(pb.ConfigureRequest(generation=3, config=agent_config({"cache": {"ttl": "1m"}})), timeout=5)
    assert not agent.app.shared.view().configured


async def test_metrics_report_the_tier(make_agent: MakeAgent, outage_server: redisserver.RedisServer) -> None:
    agent = await make_agent(initial_config=shared_config(outage_server.url, "m:"), metrics_port=0,
                             metrics_host="127.0.0.1")
    await until(lambda: agent.app.shared.view().up, "the tier to come up")
    port = agent.app.metrics.port  # type: ignore[union-attr]

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    assert "perfpilot_sidecar_cache_shared_up 1.0" in await asyncio.to_thread(scrape)
    outage_server.kill()
    await until(lambda: not agent.app.shared.view().up, "the outage to be seen")
    body = await asyncio.to_thread(scrape)
    assert "perfpilot_sidecar_cache_shared_up 0.0" in body
    assert "perfpilot_sidecar_cache_shared_errors_total" in body


async def test_dependencies_and_tags_reach_the_other_replica(make_agent: MakeAgent,
                                                             redis_server: redisserver.RedisServer) -> None:
    """Values with dependencies stay in the replica that wrote them (Redis keeps no dependency
    index); every replica cascades through its own: a tag invalidated, or a dependency overwritten,
    in one replica drops the dependents in the others."""
    a, b = await replicas(make_agent, redis_server.url, "dep:")
    await a.stub.CachePut(pb.CachePutRequest(key="doc/1", value=b"v1"), timeout=5)
    await a.stub.CachePut(pb.CachePutRequest(key="summary/a", value=b"s", dependencies=pb.CacheDependencies(
        keys=["doc/1"], tags=["team-a"])), timeout=5)
    await b.stub.CachePut(pb.CachePutRequest(key="summary/b1", value=b"s",
                                             dependencies=pb.CacheDependencies(keys=["doc/1"])), timeout=5)
    await b.stub.CachePut(pb.CachePutRequest(key="summary/b2", value=b"s",
                                             dependencies=pb.CacheDependencies(tags=["team-a"])), timeout=5)
    await until(lambda: flushed(a.app) and flushed(b.app), "the writes to be sent")
    r = Redis.from_url(redis_server.url)
    try:
        assert sorted(await r.keys("dep:*")) == [b"dep:doc/1"]  # dependents are not shared
    finally:
        await r.aclose()
    await a.stub.CachePut(pb.CachePutRequest(key="doc/1", value=b"v2"), timeout=5)  # its dependents go, everywhere
    await until(lambda: "summary/b1" not in b.app.cache and "summary/a" not in a.app.cache,
                "the dependents of the overwritten key to go in both replicas")
    assert "summary/b2" in b.app.cache
    await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(tags=["team-a"]), timeout=5)
    await until(lambda: "summary/b2" not in b.app.cache, "b to drop what it tagged team-a")
    assert await found(b, "doc/1") == b"v2"


def test_two_sidecar_processes_share_redis_through_the_client_library(sock_dir: str) -> None:
    """The real thing end to end: two `perfpilot-sidecar` processes configured as the webhook does
    (PERFPILOT_CONFIG with cache.shared, the password in PERFPILOT_CACHE_SHARED_PASSWORD), the apps
    using perfpilot_client; Redis killed and restarted under them."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from perfpilot_client import AgentClient

    from .test_process import _wait_serving

    script = Path(sys.executable).parent / "perfpilot-sidecar"

    def wait(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    with redisserver.RedisServer(redisserver.port_for(3), password="pw-123") as server:
        config = {"pools": {"processWorkers": 0}, "cache": {"shared": {
            "url": server.url, "keyPrefix": "proc:", "timeout": "2s",
            "credentialsSecret": {"name": "redis-auth", "key": "password"}}}}
        procs, clients = [], []
        try:
            for name in ("a", "b"):
                sock = f"{sock_dir}/{name}.sock"
                env = {**os.environ, "PERFPILOT_SOCKET": sock, "PERFPILOT_CONFIG": json.dumps(config),
                       "PERFPILOT_PROFILE": "ns/p", "PERFPILOT_POD_NAME": f"pod-{name}",
                       "PERFPILOT_CACHE_SHARED_PASSWORD": "pw-123"}
                procs.append(subprocess.Popen([str(script), "--port", "-1", "--health-port", "-1", "--metrics-port", "-1", "--grace", "2"],
                                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
                _wait_serving(sock)
                clients.append(AgentClient(f"unix:{sock}", timeout=10))
            a, b = clients

            def up(c: AgentClient) -> bool:
                return bool(c.stub.GetStats(pb.GetStatsRequest(), timeout=10).shared_cache.up)

            wait(lambda: up(a) and up(b), "both sidecars to connect (with the password)")
            a.cache_put("answer/1", b"computed in a")
            wait(lambda: b.cache_get("answer/1") == b"computed in a", "a hit in b for a's value")
            a.cache_invalidate("answer/")
            wait(lambda: b.cache_get("answer/1") is None, "the invalidation to reach b")

            server.kill()
            wait(lambda: not up(a) and not up(b), "both sidecars to see the outage")
            a.cache_put("answer/2", b"local only")  # served: no error to the app
            assert a.cache_get("answer/2") == b"local only" and b.cache_get("answer/2") is None

            server.start()
            wait(lambda: up(a) and up(b), "both sidecars to reconnect")
            a.cache_put("answer/3", b"shared again")
            wait(lambda: b.cache_get("answer/3") == b"shared again", "sharing to resume")
            assert b.stub.GetStats(pb.GetStatsRequest(), timeout=10).shared_cache.resyncs == 1
        finally:
            for c in clients:
                c.close()
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
