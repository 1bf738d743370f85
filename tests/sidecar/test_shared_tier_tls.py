"""The shared cache tier over TLS (rediss://) against a real TLS-only redis-server.

The server presents a certificate of a throw-away CA. The sidecar trusts "the system CAs", which
Python's default verify paths take from SSL_CERT_FILE when it is set (the first tests point it at
the throw-away CA, as an image's CA bundle would hold a real one), and cache.shared.tls.caSecret's
PEM (the later tests, without SSL_CERT_FILE). Both replicas are full in-process AgentApps with the
real SharedTier, as in test_shared_tier.py.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from e2e.harness import redisserver
from perfpilot.v1 import agent_pb2 as pb

from .conftest import MakeAgent
from .test_shared_tier import flushed, found, replicas, shared_config, until

pytestmark = pytest.mark.skipif(redisserver.binary() is None,
                                reason="redis-server is not installed (make debs installs Debian's redis-server)")
PASSWORD = "tls-s3cret"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> redisserver.TlsFiles:
    return redisserver.throwaway_tls(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: redisserver.TlsFiles) -> Iterator[redisserver.RedisServer]:
    with redisserver.RedisServer(redisserver.port_for(5), tls=tls_files) as server:
        yield server


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch, tls_files: redisserver.TlsFiles) -> Path:
    """The throw-away CA is this process's only "system" CA (Python's default verify paths)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return tls_files.ca


def direct(server: redisserver.RedisServer, tls: redisserver.TlsFiles, password: str | None = None) -> Redis:
    """A client of the test's own, trusting the CA explicitly (to look at what the tier wrote)."""
    return Redis(host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(tls.ca), password=password)


@pytest.mark.usefixtures("trusted")
async def test_a_write_in_one_replica_is_a_hit_in_the_other_over_tls(
        make_agent: MakeAgent, tls_server: redisserver.RedisServer, tls_files: redisserver.TlsFiles) -> None:
    assert tls_server.url.startswith("rediss://")
    a, b = await replicas(make_agent, tls_server.url, "tls-hit:")
    assert await found(b, "q") is None
    await a.stub.CachePut(pb.CachePutRequest(key="q", value=b"over tls", ttl={"seconds": 60}), timeout=5)
    await until(lambda: flushed(a.app), "the write-through to be sent")
    resp = await b.stub.CacheGet(pb.CacheGetRequest(key="q"), timeout=5)
    assert resp.found and resp.value == b"over tls" and 55 < resp.ttl_remaining.seconds <= 60
    stats = await b.stub.GetStats(pb.GetStatsRequest(), timeout=5)
    assert (stats.shared_cache.up, stats.shared_cache.hits, stats.shared_cache.errors) == (True, 1, 0)
    r = direct(tls_server, tls_files)
    try:
        assert await r.get("tls-hit:q") == b"over tls"
    finally:
        await r.aclose()


@pytest.mark.usefixtures("trusted")
async def test_invalidation_reaches_the_other_replica_over_tls_pubsub(
        make_agent: MakeAgent, tls_server: redisserver.RedisServer, tls_files: redisserver.TlsFiles) -> None:
    a, b = await replicas(make_agent, tls_server.url, "tls-inv:")
    for key in ("u/1/a", "u/2/a"):
        await a.stub.CachePut(pb.CachePutRequest(key=key, value=key.encode()), timeout=5)
    await until(lambda: flushed(a.app), "the writes to be sent")
    assert await found(b, "u/1/a") == b"u/1/a" and await found(b, "u/2/a") == b"u/2/a"  # now in b's own cache
    await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(prefix="u/1/"), timeout=5)
    # b learns it only through the channel it subscribed to over TLS
    await until(lambda: "u/1/a" not in b.app.cache, "the invalidation to reach b over pub/sub")
    assert "u/2/a" in b.app.cache
    assert b.app.shared.view().counters.invalidations_received >= 1
    await a.stub.CachePut(pb.CachePutRequest(key="u/2/a", value=b"v2"), timeout=5)  # an overwrite, too
    await until(lambda: "u/2/a" not in b.app.cache, "the overwrite to reach b over pub/sub")
    assert await found(b, "u/2/a") == b"v2"
    r = direct(tls_server, tls_files)
    try:
        assert await r.keys("tls-inv:u/1/*") == []
    finally:
        await r.aclose()


@pytest.mark.usefixtures("trusted")
async def test_the_password_is_sent_over_tls(make_agent: MakeAgent, tls_files: redisserver.TlsFiles) -> None:
    with redisserver.RedisServer(redisserver.port_for(6), password=PASSWORD, tls=tls_files) as server:
        shared = {"credentialsSecret": {"name": "redis-auth", "key": "password"}}
        a, b, wrong = [await make_agent(initial_config=shared_config(server.url, "tls-pw:", timeout="2s", **shared),
                                        cache_shared_password=password, pod_name=name)
                       for name, password in (("a", PASSWORD), ("b", PASSWORD), ("wrong", "not-it"))]
        await until(lambda: a.app.shared.view().up and b.app.shared.view().up, "the authenticated tiers to come up")
        await a.stub.CachePut(pb.CachePutRequest(key="k", value=b"v"), timeout=5)
        await until(lambda: flushed(a.app), "the write to be sent")
        assert await found(b, "k") == b"v"
        await until(lambda: wrong.app.shared.view().last_error != "", "the refused password to be reported")
        view = wrong.app.shared.view()
        assert not view.up and "AuthenticationError" in view.last_error and "not-it" not in view.last_error
        r = direct(server, tls_files, PASSWORD)
        try:
            names = {c["name"] for c in await r.client_list()}
        finally:
            await r.aclose()
        assert {n for n in names if n.startswith("perfpilot:")} == {"perfpilot:a", "perfpilot:b"}  # over TLS


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


@pytest.mark.parametrize("case", ["untrusted CA", "another host name"])
async def test_a_certificate_the_sidecar_cannot_verify_is_refused_and_the_app_is_served(
        case: str, make_agent: MakeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tls_files: redisserver.TlsFiles) -> None:
    """Refused at the handshake: the tier stays down (GetStats, /metrics say why) and every call
    is served by the local tiers; the password is never sent to a server that was not verified."""
    if case == "untrusted CA":  # a valid certificate for 127.0.0.1, of a CA nobody trusts
        served, expect = redisserver.throwaway_tls(tmp_path / "other-ca"), "CERTIFICATE_VERIFY_FAILED"
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
    else:  # the trusted CA, but a certificate for another host
        served, expect = redisserver.throwaway_tls(tmp_path / "other-name", names=("redis.elsewhere",)), "match"
        monkeypatch.setenv("SSL_CERT_FILE", str(served.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with redisserver.RedisServer(redisserver.port_for(7), password=PASSWORD, tls=served) as server:
        shared = {"credentialsSecret": {"name": "redis-auth", "key": "password"}, "timeout": "2s"}
        agent = await make_agent(initial_config=shared_config(server.url, "tls-bad:", **shared),
                                 cache_shared_password=PASSWORD, metrics_port=0, metrics_host="127.0.0.1")
        await until(lambda: agent.app.shared.view().counters.errors >= 2, "the handshake to be refused (twice)")
        stats = await agent.stub.GetStats(pb.GetStatsRequest(), timeout=5)
        sc = stats.shared_cache
        assert sc.configured and not sc.up and sc.down_since_unix_nano > 0
        assert expect in sc.last_error, sc.last_error
        body = await asyncio.to_thread(scrape, agent.app.metrics.port)  # type: ignore[union-attr]
        assert "perfpilot_sidecar_cache_shared_up 0.0" in body
        # the app is served by the local tiers: no call fails
        await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"local"), timeout=5)
        assert await found(agent, "k") == b"local" and await found(agent, "missing") is None
        assert (await agent.stub.GetStats(pb.GetStatsRequest(), timeout=5)).shared_cache.skipped >= 1
        await agent.heartbeat_ok()
        r = Redis(host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(served.ca),
                  ssl_check_hostname=False, password=PASSWORD)
        try:  # nothing reached Redis: no sidecar connection ever got past the handshake
            assert not any(c["name"].startswith("perfpilot:") for c in await r.client_list())
            assert await r.dbsize() == 0
        finally:
            await r.aclose()


CA_SECRET = {"tls": {"caSecret": {"name": "redis-tls", "key": "ca.crt"}}, "timeout": "2s"}


async def test_a_private_ca_from_tls_ca_secret_is_trusted(
        make_agent: MakeAgent, tls_server: redisserver.RedisServer, tls_files: redisserver.TlsFiles) -> None:
    """cache.shared.tls.caSecret: the CA's PEM (the webhook's env var, here the setting it fills)
    is trusted besides the system CAs; SSL_CERT_FILE is not set, so nothing else trusts it."""
    pem = tls_files.ca.read_text()
    a, b = [await make_agent(initial_config=shared_config(tls_server.url, "tls-ca:", **CA_SECRET),
                             cache_shared_ca=pem) for _ in range(2)]
    await until(lambda: a.app.shared.view().up and b.app.shared.view().up, "both tiers to trust the private CA")
    await a.stub.CachePut(pb.CachePutRequest(key="k", value=b"private ca"), timeout=5)
    await until(lambda: flushed(a.app), "the write to be sent")
    assert await found(b, "k") == b"private ca"
    await a.stub.CacheInvalidate(pb.CacheInvalidateRequest(keys=["k"]), timeout=5)
    await until(lambda: "k" not in b.app.cache, "the invalidation to reach b")
    got = await a.control.GetConfig(pb.GetConfigRequest(), timeout=5)
    assert got.config.cache.shared.tls.ca_secret.name == "redis-tls"  # the reference, never the PEM
    assert "BEGIN CERTIFICATE" not in str(got.config)


@pytest.mark.parametrize("case", ["not in the environment", "not a certificate", "another CA"])
async def test_a_ca_secret_that_cannot_verify_the_server_is_reported(
        case: str, make_agent: MakeAgent, tls_server: redisserver.RedisServer, tmp_path: Path) -> None:
    """Down, saying why and naming the Secret; the app is served by the local tiers."""
    pem, expect = {
        "not in the environment": (None, "cache.shared.tls.caSecret redis-tls/ca.crt is not in this sidecar's "
                                         "environment"),
        "not a certificate": ("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                              "cache.shared.tls.caSecret redis-tls/ca.crt does not hold a PEM CA certificate"),
        "another CA": (redisserver.throwaway_tls(tmp_path).ca.read_text(), "CERTIFICATE_VERIFY_FAILED"),
    }[case]
    agent = await make_agent(initial_config=shared_config(tls_server.url, "tls-ca-bad:", **CA_SECRET),
                             cache_shared_ca=pem)
    await until(lambda: agent.app.shared.view().counters.errors >= 1, "the tier to give up on the server")
    sc = (await agent.stub.GetStats(pb.GetStatsRequest(), timeout=5)).shared_cache
    assert not sc.up and expect in sc.last_error, sc.last_error
    await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"local"), timeout=5)
    assert await found(agent, "k") == b"local"


SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.skipif(not SYSTEM_CAS.exists(), reason="Debian's ca-certificates is not installed")
async def test_a_large_trust_store_is_loaded_once_outside_the_connect_timeout(
        make_agent: MakeAgent, tls_server: redisserver.RedisServer, tls_files: redisserver.TlsFiles,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the system CAs takes OpenSSL 3 tens of ms (the image's 142: 30-60 ms here), more than
    the default 50ms timeout that bounds a connect. redis-py built a context per connection inside
    that timeout, on the event loop: with a store that takes longer than the timeout to load no
    connection ever succeeded. The store here is Debian's, ten times over (~0.4-0.8 s to load), so
    it is slower than the timeout on any machine; the tier keeps the default timeout."""
    bundle = tmp_path / "store.pem"
    bundle.write_text(SYSTEM_CAS.read_text() * 10 + tls_files.ca.read_text())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    agent = await make_agent(initial_config=shared_config(tls_server.url, "tls-store:"))
    assert agent.app.shared.tier is not None and agent.app.shared.tier.cfg.timeout == 0.05
    await until(lambda: agent.app.shared.view().up, "the tier to connect with the default timeout", 30)
    await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"v"), timeout=5)
    await until(lambda: flushed(agent.app), "the write to be sent")
    assert agent.app.shared.view().counters.writes == 1
