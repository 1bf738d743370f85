"""Hypothesis fuzzing of Configure and RunKernel against a live in-process agent.

Hypothesis drives a synchronous gRPC stub from a worker thread while the agent keeps running on
the test's event loop, so every example is a real call over the Unix socket. Any answer other than
OK or INVALID_ARGUMENT (INTERNAL, UNKNOWN, a dropped connection) fails the test.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_contract.trust import AGENT_SERVER_NAME
from tests.sidecar.conftest import Agent

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

i32 = st.integers(-(2**31), 2**31 - 1)
durations = st.builds(
    duration_pb2.Duration,
    seconds=st.one_of(st.integers(-10, 4000), st.integers(-315_576_000_000, 315_576_000_000)),
    nanos=st.integers(-999_999_999, 999_999_999),
)
pools = st.builds(pb.PoolsConfig, process_workers=st.one_of(st.integers(-2, 70), i32),
                  thread_workers=st.one_of(st.integers(-2, 300), i32), max_queue=st.one_of(st.integers(-2, 2000), i32),
                  batch_size=st.one_of(st.integers(-2, 200), i32), batch_wait=durations)
i64 = st.integers(-(2**63), 2**63 - 1)
l1s = st.builds(pb.L1CacheConfig, enabled=st.booleans(), max_entries=st.one_of(st.integers(-2, 2_000_000), i64),
                max_bytes=st.one_of(st.integers(-2, 2**31), i64), ttl=st.one_of(st.none(), durations),
                max_value_bytes=st.one_of(st.integers(-2, 5 << 20), i64))
caches = st.builds(pb.CacheConfig, ttl=st.one_of(st.none(), durations), max_entries=i64, l1=st.one_of(st.none(), l1s))
heartbeats = st.builds(pb.HeartbeatConfig, interval=st.one_of(st.none(), durations), timeout=st.one_of(st.none(), durations))
kernel_names = st.one_of(st.sampled_from(["cosine_topk", "weighted_mean", "normalize_score"]), st.text(max_size=12))
kernels = st.builds(pb.KernelsConfig, warm=st.lists(kernel_names, max_size=4), parallel=st.booleans())
configs = st.builds(pb.AgentConfig, pools=st.one_of(st.none(), pools), cache=st.one_of(st.none(), caches),
                    heartbeat=st.one_of(st.none(), heartbeats), kernels=st.one_of(st.none(), kernels))
configure_requests = st.builds(pb.ConfigureRequest, generation=st.integers(-(2**63), 2**63 - 1), config=configs)


@st.composite
def tensors(draw: Any) -> pb.Tensor:
    dtype = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 99]))
    shape = draw(st.lists(st.integers(-2, 6), max_size=4))
    itemsize = {1: 4, 2: 8, 3: 4, 4: 8}.get(dtype, 4)
    count = 1
    for d in shape:
        count *= max(d, 0)
    exact = draw(st.booleans())
    size = count * itemsize if exact else draw(st.integers(0, 64))
    t = pb.Tensor(dtype=dtype, shape=shape)
    if draw(st.integers(0, 9)) == 0:
        t.shm.name = draw(st.text(max_size=10))
        t.shm.offset = draw(st.integers(0, 2**64 - 1))
    elif draw(st.integers(0, 9)) > 0:
        t.raw = draw(st.binary(min_size=size, max_size=size))
    return t


names = st.lists(st.one_of(st.text(max_size=8), st.text(min_size=250, max_size=1100)), max_size=40)
dependencies = st.builds(pb.CacheDependencies, keys=names, prefixes=names, tags=names)
cache_put_requests = st.builds(pb.CachePutRequest, key=st.text(max_size=12), value=st.binary(max_size=64),
                               ttl=st.one_of(st.none(), durations), dependencies=st.one_of(st.none(), dependencies))
cache_invalidate_requests = st.builds(
    pb.CacheInvalidateRequest, prefix=st.text(max_size=12),
    keys=st.one_of(names, st.lists(st.just("k"), min_size=999, max_size=1002)), tags=names)
client_caches = st.builds(pb.ClientCacheStats, hits=st.integers(0, 2**64 - 1), misses=st.integers(0, 2**64 - 1),
                          staleness_seconds=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
                          staleness=st.one_of(st.none(), st.builds(pb.Histogram)))
record_requests = st.builds(pb.RecordTimingsRequest, cache=client_caches)
run_requests = st.builds(
    pb.RunKernelRequest,
    kernel=kernel_names,
    inputs=st.dictionaries(st.sampled_from(["query", "matrix", "values", "weights", "x"]), tensors(), max_size=3),
    params=st.dictionaries(st.sampled_from(["k", "j"]), st.floats(allow_nan=True, allow_infinity=True), max_size=2),
    use_cache=st.booleans(),
    output_placement=st.sampled_from([0, 1, 2]),
)


async def fuzz(agent: Agent, strategy: st.SearchStrategy[Any], method: str) -> dict[grpc.StatusCode, int]:
    """Run hypothesis in a thread against the live agent; returns how often each code came back."""
    seen: dict[grpc.StatusCode, int] = {}

    def body() -> None:
        if method == "Configure":   # operator-only: the control port with the operator's certificate
            key, cert = agent.pki.operator
            creds = grpc.ssl_channel_credentials(agent.app.tls_cert, private_key=key, certificate_chain=cert)
            channel = grpc.secure_channel(f"127.0.0.1:{agent.app.tcp_port}", creds,
                                          options=[("grpc.ssl_target_name_override", AGENT_SERVER_NAME)])
        else:
            channel = grpc.insecure_channel(f"unix:{agent.app.socket_path}")
        with channel as ch:
            stub = pb_grpc.AgentStub(ch)

            @FUZZ
            @given(strategy)
            def check(request: Any) -> None:
                try:
                    getattr(stub, method)(request, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()  # type: ignore[attr-defined]
                    assert code in ALLOWED, f"{code}: {exc.details()}"  # type: ignore[attr-defined]
                seen[code] = seen.get(code, 0) + 1
                assert stub.Heartbeat(pb.HeartbeatRequest(), timeout=10).state == pb.AGENT_STATE_READY

            check()

    await asyncio.to_thread(body)
    return seen


async def test_fuzz_configure(agent: Agent) -> None:
    seen = await fuzz(agent, configure_requests, "Configure")
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0
    cfg = await agent.stub.GetConfig(pb.GetConfigRequest())
    assert cfg.generation >= 0  # whatever got applied is readable and self-consistent
    assert 1 <= cfg.config.pools.process_workers <= 64


async def test_fuzz_run_kernel(agent: Agent) -> None:
    seen = await fuzz(agent, run_requests, "RunKernel")
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0


async def test_fuzz_run_kernel_valid_shapes_succeed(agent: Agent) -> None:
    """Well-formed random inputs must come back OK (the fuzz above mostly explores rejections)."""
    import numpy as np

    @st.composite
    def good(draw: Any) -> pb.RunKernelRequest:
        b, n, d = draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 8))
        dt = draw(st.sampled_from([(pb.DTYPE_FLOAT32, "<f4"), (pb.DTYPE_FLOAT64, "<f8")]))
        arr = st.floats(-100, 100, width=32)
        q = np.array(draw(st.lists(arr, min_size=b * d, max_size=b * d)), dtype=dt[1]).reshape(b, d)
        m = np.array(draw(st.lists(arr, min_size=n * d, max_size=n * d)), dtype=dt[1]).reshape(n, d)
        return pb.RunKernelRequest(kernel="cosine_topk", params={"k": draw(st.integers(1, n))},
                                   use_cache=draw(st.booleans()),
                                   inputs={"query": pb.Tensor(dtype=dt[0], shape=q.shape, raw=q.tobytes()),
                                           "matrix": pb.Tensor(dtype=dt[0], shape=m.shape, raw=m.tobytes())})

    seen = await fuzz(agent, good(), "RunKernel")
    assert set(seen) == {grpc.StatusCode.OK}


@pytest.mark.parametrize("method, strategy", [("CachePut", cache_put_requests),
                                               ("CacheInvalidate", cache_invalidate_requests),
                                               ("RecordTimings", record_requests)])
async def test_fuzz_cache_requests(agent: Agent, method: str, strategy: st.SearchStrategy[Any]) -> None:
    """Dependencies, invalidation lists and the clients' L1 reports: bounded, never INTERNAL."""
    seen = await fuzz(agent, strategy, method)
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0 and seen.get(grpc.StatusCode.OK, 0) > 0
