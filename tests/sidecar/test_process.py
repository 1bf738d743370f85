"""The agent as a process: console script + SIGTERM, draining, import hygiene, /metrics, real kernels."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.metrics.definitions import METRICS, full_name
from perfpilot_client import AsyncAgentClient
from tests.sidecar.conftest import FakePools, MakeAgent

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "perfpilot-sidecar"


def _wait_serving(socket_path: str, timeout: float = 60.0) -> None:
    """Block on the health Watch stream until SERVING (wait_for_ready covers the socket appearing)."""
    with grpc.insecure_channel(f"unix:{socket_path}") as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), wait_for_ready=True,
                                                      timeout=timeout)
        for msg in stream:
            if msg.status == health_pb2.HealthCheckResponse.SERVING:
                stream.cancel()
                return
    raise AssertionError("health stream ended before SERVING")


def test_console_script_serves_and_exits_cleanly_on_sigterm(sock_dir: str) -> None:
    assert SCRIPT.exists(), "run `make venv` to install the console script"
    sock = f"{sock_dir}/agent.sock"
    env = {**os.environ, "PERFPILOT_SOCKET": sock}
    proc = subprocess.Popen([str(SCRIPT), "--port", "0", "--health-port", "0", "--metrics-port", "-1", "--grace", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_serving(sock)
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            stub = pb_grpc_stub(ch)
            assert stub.Heartbeat(pb.HeartbeatRequest(sequence=5), timeout=10).sequence == 5
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not os.path.exists(sock)
    assert "stopped" in err


def test_bad_config_exits_2(sock_dir: str) -> None:
    r = subprocess.run([str(SCRIPT), "--socket", f"{sock_dir}/x.sock", "--port", "-1", "--health-port", "-1", "--metrics-port", "-1",
                        "--config", '{"pools": {"processWorkers": -3}}'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pools.processWorkers must be between 0 and 64, got -3" in r.stderr


def test_bad_flag_value_is_reported(sock_dir: str) -> None:
    env = {**os.environ, "PERFPILOT_PORT": "not-a-port"}
    r = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "PERFPILOT_PORT='not-a-port' is not a valid int" in r.stderr


def pb_grpc_stub(ch: grpc.Channel):  # type: ignore[no-untyped-def]
    from perfpilot.v1 import agent_pb2_grpc

    return agent_pb2_grpc.AgentStub(ch)


HEARTBEAT_ONLY = textwrap.dedent("""
    import asyncio, sys, tempfile, os
    from perfpilot_agent.app import AgentApp
    from perfpilot_agent.config import Settings
    from perfpilot_client import AsyncAgentClient
    from perfpilot.v1 import agent_pb2 as pb

    async def main():
        d = tempfile.mkdtemp(prefix="pp-")
        app = AgentApp(Settings(socket_path=os.path.join(d, "a.sock"), port=0, metrics_port=0))
        await app.start()
        await app.wait_ready()
        async with AsyncAgentClient(app.socket_path) as c:
            for i in range(20):
                await c.heartbeat(i)
            app.configure(1, pb.AgentConfig(pools=pb.PoolsConfig(process_workers=3, thread_workers=2,
                                                                 max_queue=5, batch_size=5)), operator=True)
            async with c.measure("op"):
                pass
            await c.flush()
            await c.cache_put("a", b"b")
            await c.stats()
        from prometheus_client import generate_latest
        generate_latest(app.metrics_registry)
        await app.stop()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite")
                     or m.startswith(("perfpilot_agent.kernels.pool", "perfpilot_agent.kernels.supervision",
                                      "perfpilot_agent.kernels.dispatch", "perfpilot_agent.runtime.tensors")))
        print(bad)
        sys.exit(1 if bad else 0)

    asyncio.run(main())
""")


def test_heartbeat_only_agent_never_imports_numba() -> None:
    r = subprocess.run([sys.executable, "-c", HEARTBEAT_ONLY], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


async def test_sigterm_style_stop_drains_in_flight_calls(make_agent: MakeAgent) -> None:
    pools = FakePools()
    pools.gate.clear()
    agent = await make_agent(pools=pools)
    q = np.ones((1, 2), "<f4")
    call = asyncio.ensure_future(agent.stub.RunKernel(pb.RunKernelRequest(
        kernel="cosine_topk", params={"k": 1},
        inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 2], raw=q.tobytes()),
                "matrix": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 2], raw=q.tobytes())})))
    await asyncio.wait_for(pools.wait_busy(1), 10)
    stop = asyncio.create_task(agent.app.stop(grace=30))
    await asyncio.wait_for(agent.app.draining.wait(), 10)
    assert agent.app.state == pb.AGENT_STATE_DRAINING and not agent.app.health.serving
    with pytest.raises(grpc.aio.AioRpcError):  # new calls are refused while draining
        await agent.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)
    assert not call.done()
    pools.gate.set()
    resp = await asyncio.wait_for(call, 10)
    assert list(resp.outputs["indices"].shape) == [1, 1]  # the in-flight call finished
    await stop
    assert pools.created[0].closed and not os.path.exists(agent.app.socket_path)


async def test_metrics_endpoint_serves_documented_names(make_agent: MakeAgent) -> None:
    agent = await make_agent(metrics_port=0, metrics_host="127.0.0.1")
    await agent.stub.RecordTimings(pb.RecordTimingsRequest(ops=[pb.OpObservations(op="op", durations_seconds=[0.01])]))
    await agent.heartbeat_ok()
    port = agent.app.metrics.port  # type: ignore[union-attr]
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    assert 'perfpilot_sidecar_app_latency_seconds_bucket{le="+Inf",op="op"} 1.0' in body
    assert 'perfpilot_sidecar_app_latency_quantile_seconds{op="op",quantile="0.99"}' in body
    assert "perfpilot_sidecar_heartbeat_duration_seconds_count 1.0" in body
    assert "perfpilot_sidecar_ready 1.0" in body
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for name, (kind, labels, _) in METRICS.items():
        assert f"`{full_name(name)}`" in docs, f"{full_name(name)} is not documented in docs/metrics.md"
        if not labels and not name.startswith("cache_shared_"):  # those only with cache.shared (test_shared_tier)
            exposed = full_name(name) + ("_count" if kind == "histogram" else "")
            assert exposed in body, f"{exposed} missing from /metrics"


@pytest.mark.skipif(shutil.which("true") is None, reason="posix only")
async def test_real_kernel_pool_end_to_end(sock_dir: str) -> None:
    """The real KernelPool (numba, cache=True): warm-up gates readiness; inline and shm inputs work."""
    from perfpilot_agent.app import AgentApp
    from perfpilot_agent.config import Settings
    from perfpilot_agent.kernels import registry

    app = AgentApp(Settings(socket_path=f"{sock_dir}/real.sock", port=-1, metrics_port=-1, grace=2,
                            initial_config={"kernels": {"warm": ["cosine_topk"]}, "pools": {"processWorkers": 1}}))
    await app.start()
    try:
        await asyncio.wait_for(app.wait_ready(), 240)
        rng = np.random.default_rng(7)
        q = rng.random((2, 32), dtype=np.float32)
        m = rng.random((3000, 32), dtype=np.float32)
        async with AsyncAgentClient(app.socket_path, shm_threshold=64 * 1024) as client:
            hb = await client.heartbeat()
            assert hb.kernels_ready and len(hb.workers) == 1 and hb.workers[0].alive
            out = await client.run_kernel("cosine_topk", query=q, matrix=m, k=4)  # matrix via shm
            want = registry.reference_numpy("cosine_topk", {"query": q, "matrix": m}, {"k": 4})
            np.testing.assert_array_equal(out["indices"], want["indices"])
            hit = await client.run_kernel("cosine_topk", query=q, matrix=m, k=4, use_cache=True)
            hit2 = await client.run_kernel("cosine_topk", query=q, matrix=m, k=4, use_cache=True)
            np.testing.assert_array_equal(hit2["indices"], want["indices"])
            stats = await client.stats()
            (ks,) = [k for k in stats.kernels if k.kernel == "cosine_topk"]
            assert ks.latency.count == 3 and ks.cache_hits == 1 and stats.pool.workers == 1
            del hit
    finally:
        await app.stop()
