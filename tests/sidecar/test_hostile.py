"""A hostile client: bytes that do not parse, unauthenticated bodies, shared-memory abuse, floods.

Every answer must be a deliberate code (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED,
FAILED_PRECONDITION, CANCELLED for a call the client cancelled), never UNKNOWN or INTERNAL, and
the agent must keep serving: each test ends with a Heartbeat and a good RunKernel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument
from tests.sidecar.conftest import Agent, MakeAgent

DELIBERATE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}
AGENT = "/perfpilot.v1.Agent/"
UNARY = ["Heartbeat", "Configure", "GetConfig", "GetStats", "RecordTimings", "RunKernel", "CacheGet", "CachePut",
         "CacheInvalidate"]
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SHM_DIR = "/dev/shm"
Q = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
M = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=np.float32)
# Bytes that are not a valid message of any request type: a truncated varint, an invalid wire type
# (7), a length prefix past the end, a string field (kernel / key / op) holding invalid UTF-8.
# Also: 5000 nested groups, and a length prefix of 4 GiB on a 6-byte body.
GARBAGE = [b"\xff\xff\xff", b"\x0f", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
           b"\x0b" * 5000, b"\x12\xff\xff\xff\xff\x0f"]


def tensor(a: np.ndarray) -> pb.Tensor:
    code = {np.dtype("<f4"): pb.DTYPE_FLOAT32, np.dtype("<f8"): pb.DTYPE_FLOAT64}[a.dtype]
    return pb.Tensor(dtype=code, shape=list(a.shape), raw=a.tobytes())  # type: ignore[arg-type]


def good_run() -> pb.RunKernelRequest:
    return pb.RunKernelRequest(kernel="cosine_topk", inputs={"query": tensor(Q), "matrix": tensor(M)}, params={"k": 2})


async def still_serving(agent: Agent) -> None:
    """Heartbeat and a good RunKernel both succeed."""
    assert (await agent.heartbeat_ok()).state == pb.AGENT_STATE_READY
    out = await agent.stub.RunKernel(good_run(), timeout=10)
    assert list(np.frombuffer(out.outputs["indices"].raw, "<i8")) == [0, 2]


async def raw_call(channel: aio.Channel, method: str, body: bytes, **kw: Any) -> grpc.StatusCode:
    """Send `body` as the request of `method` (no serializer: the bytes go out as they are)."""
    try:
        if method.endswith("/WatchEvents") or method.endswith("/Watch"):
            call = channel.unary_stream(method)(body, timeout=5, **kw)
            await call.read()
            call.cancel()
        else:
            await channel.unary_unary(method)(body, timeout=5, **kw)
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- bytes that do not parse ---------------------------------------------------------------------


@pytest.mark.parametrize("method", [AGENT + m for m in [*UNARY, "WatchEvents"]] + [HEALTH_CHECK])
async def test_unparsable_bytes_are_invalid_argument(make_agent: MakeAgent, method: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    agent = await make_agent()
    # Configure is operator-only: its garbage comes over the control port with the operator's certificate
    channel = agent.tls_channel(agent.pki.operator) if method.endswith("/Configure") else agent.channel
    with caplog.at_level(logging.DEBUG):
        for body in GARBAGE:
            try:
                await channel.unary_unary(method)(body, timeout=5) if "Watch" not in method else \
                    await channel.unary_stream(method)(body, timeout=5).read()
            except aio.AioRpcError as exc:
                # a body that happens to parse (unknown fields) fails validation instead
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]  # no ERROR traceback per call
    assert agent.app.malformed.count >= 3
    await still_serving(agent)


async def test_malformed_requests_are_logged_once_at_info(make_agent: MakeAgent,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    agent = await make_agent()
    operator = agent.tls_channel(agent.pki.operator)
    with caplog.at_level(logging.INFO, logger="perfpilot_agent.server.decoding"):
        for _ in range(20):
            assert await raw_call(operator, AGENT + "Configure", b"\xff") == grpc.StatusCode.INVALID_ARGUMENT
    assert len([r for r in caplog.records if r.name == "perfpilot_agent.server.decoding"]) == 1
    stats = agent.app.rpc_stats.calls
    assert stats[("Configure", "INVALID_ARGUMENT")] == 20


# -- auth before parsing -------------------------------------------------------------------------


@pytest.mark.parametrize("method", [AGENT + m for m in UNARY if m != "Heartbeat"] + [AGENT + "WatchEvents"])
async def test_unauthenticated_garbage_is_refused_before_parsing(make_agent: MakeAgent, method: str) -> None:
    """Health port (plaintext) and a certificate of the CA that is not the operator's: refused, unparsed."""
    agent = await make_agent()
    for ch in (agent.health_channel(), agent.tls_channel(agent.pki.not_operator)):
        for body in GARBAGE:
            assert await raw_call(ch, method, body) == grpc.StatusCode.UNAUTHENTICATED
    assert await raw_call(agent.tls_channel(agent.pki.operator), method, GARBAGE[0]) == grpc.StatusCode.INVALID_ARGUMENT
    assert agent.app.malformed.count == 1  # only the authenticated call reached the parser
    await still_serving(agent)


METADATA_ABUSE = [
    ((("x-big", "x" * 20_000),), grpc.StatusCode.RESOURCE_EXHAUSTED),  # over grpc's 16 KiB
    ((("authorization", "Bearer " + "x" * 7_000),), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization-bin", b"\x00\xff"),), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Basic dDp0"),), grpc.StatusCode.UNAUTHENTICATED),
]


@pytest.mark.parametrize("metadata, code", METADATA_ABUSE, ids=[f"md{i}" for i in range(len(METADATA_ABUSE))])
async def test_metadata_abuse_and_unknown_methods(make_agent: MakeAgent, metadata: Any, code: grpc.StatusCode) -> None:
    """No metadata makes a caller the operator: on the health port and with a non-operator certificate."""
    agent = await make_agent()
    for ch in (agent.health_channel(), agent.tls_channel(agent.pki.not_operator)):
        assert await raw_call(ch, AGENT + "GetConfig", b"", metadata=metadata) == code
        for method in (AGENT + "Nope", "/nope", AGENT):
            got = await raw_call(ch, method, b"\xff", metadata=metadata)
            assert got == (code if code == grpc.StatusCode.RESOURCE_EXHAUSTED else grpc.StatusCode.UNIMPLEMENTED)
    await still_serving(agent)


# -- shared-memory abuse -------------------------------------------------------------------------


@pytest.fixture
def shm_names() -> Iterator[list[str]]:
    """Names created under /dev/shm by a test; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        path = os.path.join(SHM_DIR, name)
        if os.path.lexists(path):
            os.unlink(path)


def make_segment(names: list[str], arr: np.ndarray) -> str:
    name = f"pp_test_{os.getpid()}_{len(names)}_{os.urandom(4).hex()}"
    names.append(name)
    arr.tofile(os.path.join(SHM_DIR, name))
    return name


def shm_run(name: str, offset: int = 0, shape: tuple[int, ...] = M.shape) -> pb.RunKernelRequest:
    ref = pb.SharedMemoryRef(name=name, offset=offset)
    return pb.RunKernelRequest(kernel="cosine_topk", params={"k": 2}, inputs={
        "query": tensor(Q), "matrix": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=list(shape), shm=ref)})


async def expect(agent: Agent, req: pb.RunKernelRequest, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(aio.AioRpcError) as ei:
        await agent.stub.RunKernel(req, timeout=10)
    assert ei.value.code() == code, ei.value.details()
    assert message in (ei.value.details() or "")


async def test_a_fifo_named_as_segment_is_refused_without_blocking(make_agent: MakeAgent,
                                                                   shm_names: list[str]) -> None:
    agent = await make_agent()
    name = f"pp_test_fifo_{os.getpid()}"
    shm_names.append(name)
    path = os.path.join(SHM_DIR, name)
    os.mkfifo(path)
    finished = threading.Event()
    unblocked = threading.Event()

    def watchdog() -> None:
        # If the agent blocks in open() the test's own event loop is stuck; open the write end so
        # the test ends (and fails) instead of hanging.
        if not finished.wait(20):
            unblocked.set()
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        await expect(agent, shm_run(name), grpc.StatusCode.INVALID_ARGUMENT, "is not a shared memory segment")
    finally:
        finished.set()
    assert not unblocked.is_set(), "opening the FIFO blocked the event loop"
    await still_serving(agent)


async def test_symlinks_directories_and_short_segments_are_refused(make_agent: MakeAgent,
                                                                   shm_names: list[str]) -> None:
    agent = await make_agent()
    target = make_segment(shm_names, M)
    link = f"pp_test_link_{os.getpid()}"
    shm_names.append(link)
    os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, link))
    await expect(agent, shm_run(link), grpc.StatusCode.INVALID_ARGUMENT, "cannot open segment")
    await expect(agent, shm_run("."), grpc.StatusCode.INVALID_ARGUMENT, "not a valid segment name")
    await expect(agent, shm_run(target, offset=4), grpc.StatusCode.INVALID_ARGUMENT,
                 "offset 4 + 36 bytes exceeds the segment size 36")
    await expect(agent, shm_run(target, offset=2), grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of the item size")
    await expect(agent, shm_run(target, offset=(1 << 64) - 4), grpc.StatusCode.INVALID_ARGUMENT,
                 "exceeds the segment size")
    await expect(agent, shm_run(target, shape=(4, 3)), grpc.StatusCode.INVALID_ARGUMENT, "exceeds the segment size")
    out = await agent.stub.RunKernel(shm_run(target), timeout=10)
    assert list(np.frombuffer(out.outputs["indices"].raw, "<i8")) == [0, 2]
    await still_serving(agent)


async def test_truncating_a_segment_while_its_call_is_queued_fails_nothing_else(
        make_agent: MakeAgent, shm_names: list[str]) -> None:
    """The agent copied the segment at admission, so truncation, rewrite and unlink while the call
    waits for a worker change nothing for it (before: the agent mapped the segment, SIGBUS)."""
    agent = await make_agent()
    name = make_segment(shm_names, M)
    path = os.path.join(SHM_DIR, name)
    agent.pools.gate.clear()
    call = asyncio.ensure_future(agent.stub.RunKernel(shm_run(name), timeout=30))
    await asyncio.wait_for(agent.pools.wait_busy(1), 10)  # admitted, decoded, held in the pool
    os.truncate(path, 0)
    await still_serving_heartbeat(agent)
    agent.pools.gate.set()
    out = await call
    assert list(np.frombuffer(out.outputs["indices"].raw, "<i8")) == [0, 2]  # the snapshot taken at admission
    np.full((3, 3), np.nan, dtype=np.float32).tofile(path)  # rewritten with NaN: refused, not computed
    await expect(agent, shm_run(name), grpc.StatusCode.INVALID_ARGUMENT, "contains NaN or infinity")
    os.unlink(path)
    await expect(agent, shm_run(name), grpc.StatusCode.INVALID_ARGUMENT, "does not exist")
    await still_serving(agent)


async def still_serving_heartbeat(agent: Agent) -> None:
    assert (await agent.heartbeat_ok()).state == pb.AGENT_STATE_READY


def test_a_segment_that_shrinks_during_the_copy_fails_that_call(shm_names: list[str]) -> None:
    from perfpilot_agent.runtime import tensors

    name = make_segment(shm_names, M)
    batch = tensors.Inputs({"matrix": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 3],
                                                shm=pb.SharedMemoryRef(name=name))}, max_bytes=1 << 20)
    try:
        os.truncate(os.path.join(SHM_DIR, name), 12)  # after the size check, before the copy
        with pytest.raises(InvalidArgument, match="shrank while the agent was reading it"):
            batch.read()
    finally:
        batch.close()


async def test_staged_shared_memory_is_bounded(make_agent: MakeAgent, shm_names: list[str]) -> None:
    agent = await make_agent(max_tensor_bytes=64)  # 4 x 64 bytes of segment copies in flight at most
    name = make_segment(shm_names, M)
    agent.pools.gate.clear()
    calls = [asyncio.ensure_future(agent.stub.RunKernel(shm_run(name), timeout=30)) for _ in range(9)]
    await asyncio.wait_for(agent.pools.wait_busy(7), 10)  # 7 copies of 36 bytes fit in 4 x 64 bytes
    pending = set(calls)
    while len(pending) > 7:
        _, pending = await asyncio.wait(pending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    agent.pools.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    codes = Counter(r.code().name if isinstance(r, aio.AioRpcError) else "OK" for r in results)
    assert codes == {"OK": 7, "RESOURCE_EXHAUSTED": 2}, codes
    assert agent.app.runner._staged == 0  # every reservation released
    await still_serving(agent)


# -- concurrency abuse ---------------------------------------------------------------------------


async def test_many_bad_calls_with_good_calls_and_cancellations(make_agent: MakeAgent, shm_names: list[str]) -> None:
    agent = await make_agent()
    name = make_segment(shm_names, M)
    ch = agent.channel
    bad: list[Any] = []
    for i in range(70):
        method = AGENT + UNARY[i % len(UNARY)]
        bad.append(raw_call(ch, method, GARBAGE[i % len(GARBAGE)]))
    bad += [agent.stub.RunKernel(shm_run("pp_missing_" + str(i)), timeout=10) for i in range(20)]
    good = [agent.stub.RunKernel(good_run(), timeout=10) for _ in range(20)]
    good += [agent.stub.RunKernel(shm_run(name), timeout=10) for _ in range(10)]
    beats = [agent.stub.Heartbeat(pb.HeartbeatRequest(sequence=i), timeout=10) for i in range(20)]
    results = await asyncio.gather(*bad, *good, *beats, return_exceptions=True)
    codes = Counter(r.code() if isinstance(r, aio.AioRpcError) else r for r in results[:90])
    assert set(codes) <= DELIBERATE | {grpc.StatusCode.OK}, codes
    assert all(not isinstance(r, BaseException) for r in results[90:]), results[90:]
    # cancel calls mid-way: while held in the pool, and right after sending
    agent.pools.gate.clear()
    held = [agent.stub.RunKernel(shm_run(name), timeout=30) for _ in range(5)]
    await asyncio.wait_for(agent.pools.wait_busy(5), 10)
    for c in held:
        c.cancel()
    early = [agent.stub.RunKernel(good_run(), timeout=30) for _ in range(5)]
    for c in early:
        c.cancel()
    agent.pools.gate.set()
    for c in held + early:
        with pytest.raises(asyncio.CancelledError):
            await c
    for _ in range(200):  # the server learns of the cancellations asynchronously
        if agent.app.runner.admission.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    assert agent.app.runner.admission.in_flight == 0
    await still_serving(agent)
    stats = agent.app.rpc_stats.calls
    assert not [k for k in stats if k[1] in ("INTERNAL", "UNKNOWN")], stats


# -- byte fuzzing --------------------------------------------------------------------------------

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
wire_bytes = st.one_of(
    st.binary(max_size=64),
    # well-formed tag + wrong wire types / lengths for the first fields of every request
    st.builds(lambda field, wt, tail: bytes([(field << 3) | wt]) + tail,
              st.integers(1, 5), st.integers(0, 7), st.binary(max_size=16)),
)


async def test_fuzzed_bytes_never_unknown_or_internal(agent: Agent) -> None:
    seen: Counter[str] = Counter()

    def body() -> None:
        with grpc.insecure_channel(f"unix:{agent.app.socket_path}") as ch:
            @FUZZ
            @given(method=st.sampled_from([AGENT + m for m in UNARY] + [HEALTH_CHECK]), data=wire_bytes)
            def one(method: str, data: bytes) -> None:
                try:
                    ch.unary_unary(method)(data, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()  # type: ignore[attr-defined]
                seen[code.name] += 1
                assert code in DELIBERATE | {grpc.StatusCode.OK}, (method, data, code)

            one()

    await asyncio.get_running_loop().run_in_executor(None, body)
    assert seen["INVALID_ARGUMENT"] > 0, seen
    await still_serving(agent)


# -- the real sidecar process --------------------------------------------------------------------

SCRIPT = Path(sys.executable).parent / "perfpilot-sidecar"


def test_sidecar_process_survives_segments_changing_under_queued_calls(sock_dir: str, shm_names: list[str]) -> None:
    """Real agent, real pool (one worker): segments are truncated, rewritten and unlinked while their
    calls wait in the queue; each call is OK or INVALID_ARGUMENT and the process keeps serving."""
    from perfpilot_agent.kernels import registry
    from tests.sidecar.test_process import _wait_serving

    sock = f"{sock_dir}/hostile.sock"
    env = {**os.environ, "PERFPILOT_SOCKET": sock,
           "PERFPILOT_CONFIG": '{"pools": {"processWorkers": 1}, "kernels": {"warm": ["cosine_topk"]}}'}
    proc = subprocess.Popen([str(SCRIPT), "--port", "-1", "--health-port", "-1", "--metrics-port", "-1", "--grace", "2",
                             "--shm-threshold-bytes", "4096"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(3)
    big = rng.random((20000, 64), dtype=np.float32)  # 5 MB: slow enough to queue the calls behind it
    q = rng.random((1, 64), dtype=np.float32)
    try:
        _wait_serving(sock, timeout=240)
        names = [make_segment(shm_names, big) for _ in range(12)]
        codes: Counter[str] = Counter()
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            run = ch.unary_unary(AGENT + "RunKernel", request_serializer=pb.RunKernelRequest.SerializeToString,
                                 response_deserializer=pb.RunKernelResponse.FromString)
            beat = ch.unary_unary(AGENT + "Heartbeat", request_serializer=pb.HeartbeatRequest.SerializeToString,
                                  response_deserializer=pb.HeartbeatResponse.FromString)

            def req(name: str) -> pb.RunKernelRequest:
                return pb.RunKernelRequest(kernel="cosine_topk", params={"k": 3}, inputs={
                    "query": tensor(q), "matrix": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=list(big.shape),
                                                            shm=pb.SharedMemoryRef(name=name))})

            futures = [run.future(req(n), timeout=120) for n in names]
            for i, name in enumerate(names):  # while the calls wait behind each other
                path = os.path.join(SHM_DIR, name)
                if i % 3 == 0:
                    os.truncate(path, 0)
                elif i % 3 == 1:
                    np.full(big.shape, np.nan, dtype=np.float32).tofile(path)
                else:
                    os.unlink(path)
            for f in futures:
                try:
                    f.result()
                    codes["OK"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1  # type: ignore[attr-defined]
            print("segment abuse codes:", dict(codes))
            assert set(codes) <= {"OK", "INVALID_ARGUMENT"}, codes
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert beat(pb.HeartbeatRequest(sequence=9), timeout=10).sequence == 9
            fresh = make_segment(shm_names, big)
            out = run(req(fresh), timeout=120)
            want = registry.reference_numpy("cosine_topk", {"query": q, "matrix": big}, {"k": 3})["indices"]
            assert list(np.frombuffer(out.outputs["indices"].raw, "<i8")) == list(want[0])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sidecar_process_survives_its_own_segments_being_truncated(sock_dir: str) -> None:
    """Another process of the same user truncates the pool's staging and output segments in a loop
    while calls run: calls fail with UNAVAILABLE (a worker killed by SIGBUS is replaced) or succeed,
    the sidecar itself never dies (it never maps those segments)."""
    from perfpilot_agent.kernels import registry
    from tests.sidecar.test_process import _wait_serving

    sock = f"{sock_dir}/tamper.sock"
    env = {**os.environ, "PERFPILOT_SOCKET": sock,
           "PERFPILOT_CONFIG": '{"pools": {"processWorkers": 2}, "kernels": {"warm": ["normalize_score"]}}'}
    proc = subprocess.Popen([str(SCRIPT), "--port", "-1", "--health-port", "-1", "--metrics-port", "-1", "--grace", "2",
                             "--shm-threshold-bytes", "4096"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(5)
    m = rng.random((50_000, 16), dtype=np.float32)  # 3.2 MB in, 200 KB out: both through segments
    q = rng.random(16, dtype=np.float32)
    req = pb.RunKernelRequest(kernel="normalize_score", inputs={"matrix": tensor(m), "query": tensor(q)})
    stop = threading.Event()
    truncated = Counter[str]()

    def tamper() -> None:
        prefixes = (f"pp_{proc.pid}_", f"ppo_{proc.pid}_")
        while not stop.is_set():
            for name in os.listdir(SHM_DIR):
                if name.startswith(prefixes):
                    try:
                        os.truncate(os.path.join(SHM_DIR, name), 0)
                        truncated["n"] += 1
                    except OSError:
                        pass

    try:
        _wait_serving(sock, timeout=240)
        codes: Counter[str] = Counter()
        with grpc.insecure_channel(f"unix:{sock}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            run = ch.unary_unary(AGENT + "RunKernel", request_serializer=pb.RunKernelRequest.SerializeToString,
                                 response_deserializer=pb.RunKernelResponse.FromString)
            thread = threading.Thread(target=tamper, daemon=True)
            thread.start()
            try:
                for _ in range(6):
                    futures = [run.future(req, timeout=120) for _ in range(4)]
                    for f in futures:
                        try:
                            f.result()
                            codes["OK"] += 1
                        except grpc.RpcError as exc:
                            codes[exc.code().name] += 1  # type: ignore[attr-defined]
            finally:
                stop.set()
                thread.join()
            assert truncated["n"] > 0
            print("own-segment tampering:", dict(codes), "truncations:", truncated["n"])
            assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            beat = ch.unary_unary(AGENT + "Heartbeat", request_serializer=pb.HeartbeatRequest.SerializeToString,
                                  response_deserializer=pb.HeartbeatResponse.FromString)
            assert beat(pb.HeartbeatRequest(sequence=3), timeout=10).sequence == 3
            for _ in range(3):  # a replacement worker may still be warming up: UNAVAILABLE is retryable
                try:
                    out = run(req, timeout=120)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            want = registry.reference_numpy("normalize_score", {"matrix": m, "query": q}, {})["scores"]
            np.testing.assert_allclose(np.frombuffer(out.outputs["scores"].raw, "<f4"), want, rtol=1e-5)
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_running_out_of_file_descriptors_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch,
                                                              shm_names: list[str]) -> None:
    import errno

    from perfpilot_agent.errors import ResourceExhausted
    from perfpilot_agent.runtime import tensors

    name = make_segment(shm_names, M)

    def emfile(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(tensors.os, "open", emfile)
    with pytest.raises(ResourceExhausted, match="too many open files"):
        tensors.Inputs({"matrix": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[3, 3], shm=pb.SharedMemoryRef(name=name))},
                       max_bytes=1 << 20)


async def test_a_call_cancelled_during_its_segment_copy_keeps_the_fd_until_the_copy_ends(
        make_agent: MakeAgent, shm_names: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    agent = await make_agent()
    big = np.ones((1024, 512), dtype=np.float32)  # 2 MiB: copied on a thread
    name = make_segment(shm_names, big)
    path = os.path.join(SHM_DIR, name)
    gate = threading.Event()
    blocked = ThreadPoolExecutor(1)
    blocked.submit(gate.wait)  # the copy waits behind this
    agent.app.runner.executor = blocked

    def open_fds() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}") == path
            except OSError:
                pass
        return n

    async def until(cond: Any) -> None:
        for _ in range(400):
            if cond():
                return
            await asyncio.sleep(0.025)
        raise AssertionError("condition not reached")

    req = pb.RunKernelRequest(kernel="cosine_topk", params={"k": 1}, inputs={
        "query": tensor(np.ones((1, 512), dtype=np.float32)),
        "matrix": pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1024, 512], shm=pb.SharedMemoryRef(name=name))})
    try:
        call = agent.stub.RunKernel(req, timeout=30)
        await until(lambda: open_fds() == 1)  # opened, copy queued on the blocked thread
        call.cancel()
        await until(lambda: agent.app.runner.admission.in_flight == 0)  # the agent saw the cancellation
        assert open_fds() == 1  # the thread will still read it: not closed under it
        gate.set()
        await until(lambda: open_fds() == 0)  # closed once the copy ended
    finally:
        gate.set()
        blocked.shutdown()
    await still_serving(agent)
