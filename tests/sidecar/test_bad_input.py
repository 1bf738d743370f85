"""Malformed requests: each is answered with the right code and a message naming the problem, and the
agent keeps serving afterwards (a Heartbeat succeeds after every case)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from tests.sidecar.conftest import MakeAgent, rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def dur(seconds: int = 0, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def t(arr: Any, dtype: int = pb.DTYPE_FLOAT32, np_dtype: str = "<f4", shape: list[int] | None = None) -> pb.Tensor:
    a = np.asarray(arr, dtype=np_dtype)
    return pb.Tensor(dtype=dtype, shape=list(a.shape) if shape is None else shape, raw=a.tobytes())  # type: ignore[arg-type]


Q = [[1.0, 0.0, 0.0]]
M = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]


def run(**kw: Any) -> Callable[[pb_grpc.AgentStub], Awaitable[Any]]:
    base: dict[str, Any] = {"kernel": "cosine_topk", "inputs": {"query": t(Q), "matrix": t(M)}, "params": {"k": 2}}
    base.update(kw)
    return lambda s: s.RunKernel(pb.RunKernelRequest(**base))


class Configure:
    """A Configure call: operator-only, so its cases run on the control port with the operator's
    certificate (transport "unix" is read as "operator" for them)."""

    def __init__(self, generation: int, sections: dict[str, Any]) -> None:
        self.request = pb.ConfigureRequest(generation=generation, config=pb.AgentConfig(**sections))

    def __call__(self, stub: pb_grpc.AgentStub) -> Awaitable[Any]:
        return stub.Configure(self.request)


def configure(generation: int = 1, **sections: Any) -> Configure:
    return Configure(generation, sections)


def pools(**kw: Any) -> pb.PoolsConfig:
    base: dict[str, Any] = dict(process_workers=2, thread_workers=4, max_queue=10, batch_size=10)
    base.update(kw)
    return pb.PoolsConfig(**base)


def timings(*ops: pb.OpObservations) -> Callable[[pb_grpc.AgentStub], Awaitable[Any]]:
    return lambda s: s.RecordTimings(pb.RecordTimingsRequest(ops=list(ops)))


def put(**kw: Any) -> Callable[[pb_grpc.AgentStub], Awaitable[Any]]:
    return lambda s: s.CachePut(pb.CachePutRequest(**kw))


async def first_batch(call: Any) -> Any:
    return await call.read()


# id, call, expected code, message substring, transport ("unix"; "socket" even for Configure; "health": the plaintext port)
CASES: list[tuple[str, Callable[[pb_grpc.AgentStub], Awaitable[Any]], grpc.StatusCode, str, Any]] = [
    ("generation-zero", configure(0), INVALID, "generation must be > 0, got 0", "unix"),
    ("generation-negative", configure(-5), INVALID, "generation must be > 0, got -5", "unix"),
    ("negative-pool-size", configure(pools=pools(process_workers=-3)), INVALID,
     "pools.processWorkers must be between 0 and 64, got -3", "unix"),
    ("huge-pool-size", configure(pools=pools(process_workers=1000)), INVALID, "pools.processWorkers must be between 0 and 64, got 1000", "unix"),
    ("zero-thread-workers", configure(pools=pools(thread_workers=0)), INVALID, "pools.threadWorkers must be between 1 and 256, got 0", "unix"),
    ("zero-max-queue", configure(pools=pools(max_queue=0)), INVALID, "pools.maxQueue must be between 1 and 1000000, got 0", "unix"),
    ("batch-wait-too-long", configure(pools=pools(batch_wait=dur(61))), INVALID, "pools.batchWait must be between 0s and 1s, got 1m1s", "unix"),
    ("ttl-overflow", configure(cache=pb.CacheConfig(ttl=dur(10**11), max_entries=10)), INVALID, "cache.ttl must be between 0s and 24h, got 27777777h46m40s", "unix"),
    ("ttl-negative", configure(cache=pb.CacheConfig(ttl=dur(-1), max_entries=10)), INVALID, "cache.ttl must be between 0s and 24h, got -1s", "unix"),
    ("ttl-bad-nanos", configure(cache=pb.CacheConfig(ttl=dur(1, 2_000_000_000), max_entries=10)), INVALID, "cache.ttl.nanos must be within", "unix"),
    ("ttl-mixed-signs", configure(cache=pb.CacheConfig(ttl=dur(5, -1), max_entries=10)), INVALID, "cache.ttl has seconds and nanos of opposite signs", "unix"),
    ("cache-missing-ttl", configure(cache=pb.CacheConfig(max_entries=10)), INVALID, "cache.ttl is required", "unix"),
    ("cache-negative-entries", configure(cache=pb.CacheConfig(ttl=dur(5), max_entries=-1)), INVALID,
     "cache.maxEntries must be between 0 and 10000000, got -1", "unix"),
    ("heartbeat-timeout-over-interval", configure(heartbeat=pb.HeartbeatConfig(interval=dur(5), timeout=dur(6))), INVALID,
     "heartbeat.timeout (6s) must be shorter than heartbeat.interval (5s)", "unix"),
    ("warm-unknown-kernel", configure(kernels=pb.KernelsConfig(warm=["nope"])), INVALID, "kernels.warm[0]: unknown kernel 'nope'; known: cosine_topk, normalize_score, weighted_mean", "unix"),
    ("warm-duplicate", configure(kernels=pb.KernelsConfig(warm=["cosine_topk", "cosine_topk"])), INVALID, "kernels.warm[1] repeats kernel", "unix"),
    ("unknown-kernel", run(kernel="nope"), INVALID, "unknown kernel 'nope'; known: cosine_topk", "unix"),
    ("empty-kernel-name", run(kernel=""), INVALID, "kernel is required", "unix"),
    ("wrong-dtype", run(inputs={"query": t(Q, pb.DTYPE_INT32, "<i4"), "matrix": t(M)}), INVALID, "query: expected 2-D float32 or float64 array, got dtype int32", "unix"),
    ("unspecified-dtype", run(inputs={"query": t(Q, pb.DTYPE_UNSPECIFIED), "matrix": t(M)}), INVALID,
     "inputs['query'].dtype is unspecified", "unix"),
    ("unknown-dtype-value", run(inputs={"query": t(Q, 99), "matrix": t(M)}), INVALID, "inputs['query'].dtype has unknown value 99", "unix"),
    ("bytes-shape-mismatch", run(inputs={"query": t(Q, shape=[2, 3]), "matrix": t(M)}), INVALID,
     "inputs['query'] has 12 bytes of data but shape [2, 3] float32 needs 24", "unix"),
    ("negative-dimension", run(inputs={"query": t(Q, shape=[-1, 3]), "matrix": t(M)}), INVALID, "inputs['query'].shape[0] is negative", "unix"),
    ("too-many-dimensions", run(inputs={"query": t(Q, shape=[1] * 9 + [3]), "matrix": t(M)}), INVALID, "at most 8 are allowed", "unix"),
    ("nan-input", run(inputs={"query": t([[np.nan, 0.0, 0.0]]), "matrix": t(M)}), INVALID, "inputs['query'] contains NaN or infinity", "unix"),
    ("oversize-array", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1 << 20, 1 << 20], raw=b""), "matrix": t(M)}),
     INVALID, "inputs['query'] is too large", "unix"),
    ("wrong-rank", run(inputs={"query": t([1.0, 0.0, 0.0]), "matrix": t(M)}), INVALID, "query: expected 2-D float32 array, got shape (3,)", "unix"),
    ("empty-matrix", run(inputs={"query": t(Q), "matrix": t(np.zeros((0, 3)))}), INVALID, "matrix: is empty", "unix"),
    ("unknown-param", run(params={"k": 1, "j": 2}), INVALID, "params['j'] is not one of cosine_topk's params: k", "unix"),
    ("dimension-mismatch", run(inputs={"query": t([[1.0, 0.0]]), "matrix": t(M)}), INVALID, "dimensions must match", "unix"),
    ("no-data", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 3]), "matrix": t(M)}), INVALID,
     "inputs['query'] has no data; set raw or shm", "unix"),
    ("missing-shm-segment", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 3],
                                                           shm=pb.SharedMemoryRef(name="pp_no_such_segment")), "matrix": t(M)}),
     INVALID, "segment 'pp_no_such_segment' does not exist", "unix"),
    ("bad-shm-name", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 3],
                                                    shm=pb.SharedMemoryRef(name="../etc/passwd")), "matrix": t(M)}),
     INVALID, "shm.name is not a valid segment name", "unix"),
    ("nan-param", run(params={"k": float("nan")}), INVALID, "params['k'] must be finite", "unix"),
    ("k-too-large", run(params={"k": 10}), INVALID, "k: must be in 1..3", "unix"),
    ("missing-input", run(inputs={"query": t(Q)}), INVALID, "matrix: missing input", "unix"),
    ("nan-duration", timings(pb.OpObservations(op="x", durations_seconds=[float("nan")])), INVALID,
     "ops[0].durationsSeconds[0] must be finite", "unix"),
    ("negative-duration", timings(pb.OpObservations(op="x", durations_seconds=[0.1, -1.0])), INVALID,
     "ops[0].durationsSeconds[1] must be finite and within [0, 86400], got -1.0", "unix"),
    ("bad-op-name", timings(pb.OpObservations(op="bad op!", durations_seconds=[0.1])), INVALID, "ops[0].op must be 1..128 characters", "unix"),
    ("errors-exceed-count", timings(pb.OpObservations(op="x", durations_seconds=[0.1], errors=2)), INVALID,
     "ops[0].errors (2) exceeds the number of durations (1)", "unix"),
    ("empty-cache-key", put(key="", value=b"x"), INVALID, "key is required", "unix"),
    ("reserved-cache-key", put(key="kernel/x", value=b"x"), INVALID, "reserved for kernel results", "unix"),
    ("cache-ttl-overflow", put(key="k", value=b"x", ttl=dur(10**10)), INVALID, "ttl must be between 0s and 24h, got 2777777h46m40s", "unix"),
    ("cache-ttl-mixed-signs", put(key="k", value=b"x", ttl=dur(1, -500_000_000)), INVALID,
     "ttl has seconds and nanos of opposite signs", "unix"),  # the same rule as Configure's
    ("cache-ttl-negative", put(key="k", value=b"x", ttl=dur(-1)), INVALID, "ttl must be between 0s and 24h, got -1s", "unix"),
    ("op-name-trailing-newline", timings(pb.OpObservations(op="checkout\n", durations_seconds=[0.1])), INVALID,
     "ops[0].op must be 1..128 characters", "unix"),
    ("warm-trailing-newline", configure(kernels=pb.KernelsConfig(warm=["cosine_topk\n"])), INVALID,
     "kernels.warm[0]: unknown kernel 'cosine_topk\\n'", "unix"),
    ("shm-name-trailing-newline", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 3],
                                                                 shm=pb.SharedMemoryRef(name="seg\n")), "matrix": t(M)}),
     INVALID, "shm.name is not a valid segment name", "unix"),
    ("shm-name-dotdot", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 3],
                                                       shm=pb.SharedMemoryRef(name="..")), "matrix": t(M)}),
     INVALID, "shm.name is not a valid segment name", "unix"),
    ("zero-dim-huge-others", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[0, 1 << 62, 1 << 62], raw=b""),
                                         "matrix": t(M)}), INVALID, "inputs['query'] is too large", "unix"),
    ("zero-dim-max-int64", run(inputs={"query": pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[(1 << 63) - 1, 0] * 4, raw=b""),
                                       "matrix": t(M)}), INVALID, "inputs['query'] is too large", "unix"),
    ("huge-input-name", run(inputs={"q" * 100_000: t(Q), "matrix": t(M)}), INVALID, "is not one of cosine_topk's inputs: query, matrix", "unix"),
    ("oversize-cache-value", put(key="k", value=b"x" * ((4 << 20) + 1)), INVALID, "at most 4194304 (--cache-max-value-bytes)", "unix"),
    ("unknown-event-type", lambda s: first_batch(s.WatchEvents(pb.WatchEventsRequest(types=[99]))), INVALID,
     "types[0] is not a known event type: 99", "unix"),
    ("oversize-max-batch", lambda s: first_batch(s.WatchEvents(pb.WatchEventsRequest(max_batch=10**6))), INVALID,
     "max_batch must be at most 10000", "unix"),
    ("configure-over-socket", configure(2), grpc.StatusCode.PERMISSION_DENIED, "Configure is operator-only", "socket"),
    ("configure-over-health-port", configure(2), UNAUTH, "control calls go to the TLS control port", "health"),
    ("oversize-message", put(key="k", value=b"x" * (65 << 20)), EXHAUSTED, "larger than max", "unix"),
]


@pytest.mark.parametrize("name, call, code, message, transport", CASES, ids=[c[0] for c in CASES])
async def test_malformed_request(make_agent: MakeAgent, name: str, call: Any, code: grpc.StatusCode,
                                 message: str, transport: Any) -> None:
    agent = await make_agent()
    if transport == "health":
        stub = pb_grpc.AgentStub(agent.health_channel())
    elif transport == "unix" and isinstance(call, Configure):
        stub = agent.control
    else:
        stub = agent.stub
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call(stub)
    got_code, details = rpc_error(ei)
    assert got_code == code, details
    assert message in details
    hb = await agent.heartbeat_ok()
    assert hb.state == pb.AGENT_STATE_READY and hb.generation == 0  # nothing was applied
    stats = await agent.stub.GetStats(pb.GetStatsRequest())
    assert len(stats.ops) == 0  # bad timing batches change nothing (all or nothing)


def test_enough_cases() -> None:
    assert len(CASES) >= 20
