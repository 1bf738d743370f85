"""The sidecar accepts what the contract (and the CRD) documents as valid: caching off
(`cache.ttl: 0s`, `cache.maxEntries: 0`) at start and through Configure, and a profile that sets
only one member of a pair (`pools.maxQueue: 64`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from google.protobuf import duration_pb2

from perfpilot.v1 import agent_pb2 as pb
from tests.sidecar.conftest import MakeAgent
from tests.sidecar.test_process import SCRIPT, _wait_serving

CACHE_OFF = {"cache": {"ttl": "0s", "maxEntries": 0}, "pools": {"processWorkers": 0, "maxQueue": 64}}


async def test_caching_off_at_start_stores_nothing(make_agent: MakeAgent) -> None:
    agent = await make_agent(initial_config=CACHE_OFF)
    cfg = (await agent.stub.GetConfig(pb.GetConfigRequest())).config
    assert (cfg.cache.ttl.ToNanoseconds(), cfg.cache.max_entries) == (0, 0)
    assert (cfg.pools.max_queue, cfg.pools.batch_size) == (64, 64)  # batchSize fits the maxQueue set
    await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"v"))
    assert not (await agent.stub.CacheGet(pb.CacheGetRequest(key="k"))).found
    assert len(agent.app.cache) == 0


async def test_configure_turns_caching_off_and_on(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"v"))
    off = pb.CacheConfig(ttl=duration_pb2.Duration(), max_entries=10)  # ttl 0s: defaults are not stored
    r = await agent.control.Configure(pb.ConfigureRequest(generation=2, config=pb.AgentConfig(cache=off)))
    assert r.applied
    await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"new"))
    assert not (await agent.stub.CacheGet(pb.CacheGetRequest(key="k"))).found  # the old value is gone too
    # an entry with its own TTL is still cached while only the default TTL is 0s
    await agent.stub.CachePut(pb.CachePutRequest(key="own", value=b"v", ttl=duration_pb2.Duration(seconds=30)))
    assert (await agent.stub.CacheGet(pb.CacheGetRequest(key="own"))).found
    none = pb.CacheConfig(ttl=duration_pb2.Duration(seconds=30), max_entries=0)
    assert (await agent.control.Configure(pb.ConfigureRequest(generation=3, config=pb.AgentConfig(cache=none)))).applied
    assert len(agent.app.cache) == 0
    await agent.stub.CachePut(pb.CachePutRequest(key="own", value=b"v", ttl=duration_pb2.Duration(seconds=30)))
    assert not (await agent.stub.CacheGet(pb.CacheGetRequest(key="own"))).found


def test_console_script_starts_with_caching_off(sock_dir: str) -> None:
    """The issue's crash-loop: `--config` with ttl 0s / maxEntries 0 used to exit 2 at start."""
    sock = f"{sock_dir}/agent.sock"
    proc = subprocess.Popen([str(SCRIPT), "--socket", sock, "--port", "-1", "--health-port", "-1", "--metrics-port", "-1",
                             "--config", json.dumps(CACHE_OFF)],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_serving(sock)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not Path(sock).exists()
