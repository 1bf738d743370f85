"""perfpilot_client against an in-process agent. The sync client runs in a worker thread (it blocks),
the agent on the test loop; synchronisation is by events and joins, never sleeps."""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import pytest

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.kernels import registry
from perfpilot_client import AgentClient, AgentConfig, AsyncAgentClient
from perfpilot_client.timings import TimingBuffer
from tests.sidecar.conftest import Agent, MakeAgent


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def new_pools(workers: int) -> pb.AgentConfig:
    return pb.AgentConfig(pools=pb.PoolsConfig(process_workers=workers, thread_workers=2, max_queue=50, batch_size=7))


async def test_sync_measure_batches_to_record_timings(agent: Agent) -> None:
    def app() -> tuple[int, int]:
        with AgentClient(agent.app.socket_path, batch_size=100, batch_wait=60.0) as client:
            for _ in range(250):
                with client.measure("step"):
                    pass
            with pytest.raises(KeyError):
                with client.measure("lookup"):
                    raise KeyError("x")
            with client.measure("lookup") as m:
                m.mark_error()
            client.flush()
            return client.timings.sent, client.timings.failed

    sent, failed = await asyncio.to_thread(app)
    assert (sent, failed) == (252, 0)
    ops = {o.op: o for o in (await agent.stub.GetStats(pb.GetStatsRequest())).ops}
    assert ops["step"].latency.count == 250 and ops["step"].errors == 0
    assert ops["lookup"].latency.count == 2 and ops["lookup"].errors == 2


async def test_sync_flusher_sends_full_batches_without_explicit_flush(agent: Agent) -> None:
    got = asyncio.get_running_loop().create_future()
    real = agent.app.monitor.record_timings

    def spy(req: pb.RecordTimingsRequest) -> pb.RecordTimingsResponse:
        resp = real(req)
        if not got.done():
            got.set_result(resp.accepted)
        return resp

    agent.app.monitor.record_timings = spy  # type: ignore[method-assign]
    client = AgentClient(agent.app.socket_path, batch_size=10, batch_wait=3600.0)
    try:
        def work() -> None:
            for _ in range(10):
                with client.measure("op"):
                    pass
        await asyncio.to_thread(work)
        assert await asyncio.wait_for(got, 10) == 10  # size-triggered flush, long before batch_wait
    finally:
        await asyncio.to_thread(client.close)


def test_timing_buffer_is_bounded() -> None:
    buf = TimingBuffer(batch_size=100, batch_wait=1.0, max_buffer=5)
    for i in range(8):
        buf.add("op", float(i), i % 2 == 0)
    assert buf.dropped == 3
    req = buf.drain()
    assert req is not None and list(req.ops[0].durations_seconds) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert req.ops[0].errors == 2 and buf.drain() is None


async def test_sync_live_config_and_change_callback(agent: Agent) -> None:
    changed: list[AgentConfig] = []
    fired = threading.Event()
    client = AgentClient(agent.app.socket_path)

    def cb(cfg: AgentConfig) -> None:
        changed.append(cfg)
        fired.set()

    try:
        first = await asyncio.to_thread(lambda: client.config)
        assert first.generation == 0 and first.pools.process_workers == 2
        await asyncio.to_thread(client.on_config_change, cb)
        await agent.control.Configure(pb.ConfigureRequest(generation=4, config=new_pools(5)))
        assert await asyncio.to_thread(fired.wait, 10)
        assert changed[-1].generation == 4 and changed[-1].pools.process_workers == 5
        cfg = await asyncio.to_thread(lambda: client.config)
        assert cfg.pools.process_workers == 5
        assert client.timings.batch_size == 7  # the flush policy follows pools.batchSize
    finally:
        await asyncio.to_thread(client.close)


async def test_sync_cache_and_kernels_over_shared_memory(make_agent: MakeAgent) -> None:
    agent = await make_agent(shm_threshold_bytes=1)  # the agent puts every output into shared memory
    rng = np.random.default_rng(1)
    q = rng.random((2, 16), dtype=np.float32)
    m = rng.random((50, 16), dtype=np.float32)
    before = _shm_names()

    def app() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bytes | None, int]:
        with AgentClient(f"unix:{agent.app.socket_path}", shm_threshold=0) as client:
            out = client.run_kernel("cosine_topk", query=q, matrix=m, k=5)
            inline = AgentClient(agent.app.socket_path, shm_threshold=10**9)
            try:
                out2 = inline.run_kernel("cosine_topk", query=q, matrix=m, k=5, use_cache=True)
            finally:
                inline.close()
            client.cache_put("user/1", b"v", ttl=30)
            value = client.cache_get("user/1")
            removed = client.cache_invalidate("user/")
            return out, out2, value, removed

    out, out2, value, removed = await asyncio.to_thread(app)
    want = registry.reference_numpy("cosine_topk", {"query": q, "matrix": m}, {"k": 5})
    for o in (out, out2):
        np.testing.assert_array_equal(o["indices"], want["indices"])
        np.testing.assert_allclose(o["scores"], want["scores"], rtol=1e-6)
    assert value == b"v" and removed == 1
    assert _shm_names() - before == set()  # every segment (ours and the agent's outputs) was unlinked


async def test_input_segments_are_reused_between_calls_and_unlinked_on_close(agent: Agent) -> None:
    """A reused segment must carry each call's own data (not the previous call's), and the client
    must not leave segments behind."""
    rng = np.random.default_rng(2)
    m = rng.random((300, 16), dtype=np.float32)
    queries = [rng.random((2, 16), dtype=np.float32) for _ in range(3)]
    before = _shm_names()

    def app() -> tuple[list[dict[str, np.ndarray]], set[str], set[str]]:
        client = AgentClient(agent.app.socket_path, shm_threshold=1024)  # m goes by shm, queries inline
        try:
            outs, seen = [], set()
            for q in queries:
                outs.append(client.run_kernel("cosine_topk", query=q, matrix=m * (len(outs) + 1), k=3))
                seen |= _shm_names() - before
            return outs, seen, _shm_names() - before
        finally:
            client.close()

    outs, seen, held = await asyncio.to_thread(app)
    for i, (q, out) in enumerate(zip(queries, outs)):
        want = registry.reference_numpy("cosine_topk", {"query": q, "matrix": m * (i + 1)}, {"k": 3})
        np.testing.assert_array_equal(out["indices"], want["indices"])
        np.testing.assert_allclose(out["scores"], want["scores"], rtol=1e-5)
    assert len(seen) == 1 and held == seen  # one segment served all three calls, kept while open
    assert _shm_names() - before == set()  # close() unlinked it


async def test_async_client_everything(agent: Agent) -> None:
    events: list[AgentConfig] = []
    got = asyncio.Event()

    async def on_change(cfg: AgentConfig) -> None:
        events.append(cfg)
        got.set()

    async with AsyncAgentClient(agent.app.socket_path, batch_size=5, batch_wait=3600.0) as client:
        hb = await client.heartbeat(3)
        assert hb.sequence == 3
        cfg = await client.get_config()
        assert cfg.generation == 0 and client.config == cfg
        await client.on_config_change(on_change)
        await agent.control.Configure(pb.ConfigureRequest(generation=9, config=new_pools(3)))
        await asyncio.wait_for(got.wait(), 10)
        assert events[-1].generation == 9 and (await client.get_config()).pools.process_workers == 3
        for _ in range(3):
            async with client.measure("a"):
                pass
        with client.measure("b"):
            pass
        await client.flush()
        ops = {o.op: o.latency.count for o in (await client.stats()).ops}
        assert ops == {"a": 3, "b": 1}
        out = await client.run_kernel("weighted_mean", values=np.ones((4, 3)), weights=np.arange(1.0, 5.0))
        np.testing.assert_allclose(out["mean"], np.ones(3))
        await client.cache_put("k", b"1")
        assert await client.cache_get("k") == b"1" and await client.cache_invalidate() == 1


def test_client_never_imports_the_agent_numba_or_numpy() -> None:
    import subprocess
    import sys

    code = ("import sys, perfpilot_client, perfpilot_client.asgi; c = perfpilot_client.AgentClient('/nonexistent.sock');"
            "c.measure('op')(lambda: None)(); c.close();"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numba', 'perfpilot_agent', 'llvmlite', 'numpy', 'psutil')];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


async def test_kernel_results_cached_by_input_digest(agent: Agent) -> None:
    rng = np.random.default_rng(3)
    q = rng.random((1, 64), dtype=np.float32)
    m = rng.random((5000, 64), dtype=np.float32)  # 1.2 MiB: digested on the agent's thread pool, sent via shm
    async with AsyncAgentClient(agent.app.socket_path) as client:
        a = await client.run_kernel("cosine_topk", query=q, matrix=m, k=3, use_cache=True)
        b = await client.run_kernel("cosine_topk", query=q, matrix=m, k=3, use_cache=True)
        pool = agent.pools.created[0]
        assert pool.calls == 1  # the second call was a cache hit
        np.testing.assert_array_equal(a["indices"], b["indices"])
        await client.run_kernel("cosine_topk", query=q, matrix=m, k=4, use_cache=True)  # other params: miss
        m2 = m.copy()
        m2[0, 0] += 1.0
        await client.run_kernel("cosine_topk", query=q, matrix=m2, k=3, use_cache=True)  # other bytes: miss
        assert pool.calls == 3
        assert await client.cache_invalidate("kernel/cosine_topk/") == 3
        await client.run_kernel("cosine_topk", query=q, matrix=m, k=3, use_cache=True)
        assert pool.calls == 4
        (ks,) = (await client.stats()).kernels
        assert ks.cache_hits == 1 and ks.latency.count == 5 and ks.errors == 0
