"""The client side of the sidecar benchmarks, run as its own process: `python -m bench.loadgen MODE SPEC_JSON`.

Why a separate process: every latency figure must have client and server in different processes
(as an app and its sidecar are), and the orchestrator's own state (NumPy, numba threads, big
arrays) must not share a GIL or a core with the measuring client. It prints one JSON line with the
result and exits.

Modes (SPEC_JSON keys in brackets):

* ``latency``  sequential unary calls [targets, rounds, block, warmup]: each round runs a block of
  calls against every target in turn (order rotating), so machine noise hits all targets alike.
  Sidecar targets get ``Heartbeat`` through the generated stub (protobuf, as an app calls it); bare
  targets get the empty raw-bytes call.
* ``closed``   closed-loop throughput [targets, concurrency, channels, seconds, rounds]: `concurrency`
  coroutines each send the next call as soon as the previous one returns; rounds alternate targets.
  Reports calls/s and the CPU the server process used (from /proc, via psutil) so a client-bound
  run can be told apart from a server-bound one.
* ``open``     open-loop load [targets, rate, seconds, segments, clients, timeout]: calls are sent at
  scheduled times t0 + i/rate whether or not earlier calls have returned; latency counts from the
  scheduled time, so a stalled server cannot slow the load down and hide its own latency
  (no coordinated omission). `clients` channels, each with its own connection.
* ``steps``    open-loop rate search [targets, rates, step_seconds, p99_limit_ms, clients, timeout]:
  steps the offered rate up until p99 >= limit or any error.
* ``watch``    WatchEvents consumer for events_per_s [target]: see watch().

Load calls are pre-serialized bytes on both sides (raw multicallables, no protobuf work in the
client): the load generator shares the machine with the server and must stay as cheap as possible.
The sidecar still parses and answers every call in full.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from grpc import aio

from bench.bare_server import EMPTY_METHOD
from bench.common import cpu_pressure_us, percentile
from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc

AGENT = "/perfpilot.v1.Agent/"
Call = Callable[..., Awaitable[Any]]
Raw = aio.UnaryUnaryMultiCallable[bytes, bytes]
"""A multicallable without (de)serializers: pre-serialized bytes in, raw bytes out."""


def channel(target: str, ident: int = 0) -> aio.Channel:
    """A channel with its own connection (a local subchannel pool: gRPC would otherwise share one)."""
    return aio.insecure_channel(target, options=[
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        ("bench.client", ident),
    ])


def _out(result: Any) -> None:
    """One JSON line on stdout: the orchestrator reads results line by line."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, everything but idle and iowait)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _server_cpu(pid: int | None) -> float:
    """CPU seconds of the server process tree (0 when no pid was given)."""
    if not pid:
        return 0.0
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in (root, *root.children(recursive=True)):
            t = p.cpu_times()
            total += t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return total


# -- request mix ------------------------------------------------------------------------------------

MIX: tuple[tuple[str, float], ...] = (
    ("Heartbeat", 0.30),
    ("CacheGet", 0.30),
    ("CachePut", 0.10),
    ("RecordTimings", 0.20),
    ("RunKernel", 0.10),
)
"""Share of each method in the open-loop load on the sidecar."""
MIX_TEXT = ("30% Heartbeat, 30% CacheGet, 10% CachePut (256 B values, 1000 keys), 20% RecordTimings "
            "(20 observations over 2 ops), 10% RunKernel cosine_topk (1x64 query vs 500x64 float32 matrix "
            "inline, k=5)")


def mix_requests(seed: int = 42) -> dict[str, list[bytes]]:
    """Pre-serialized requests per method (bytes reused across calls)."""
    rnd = random.Random(seed)
    import struct

    def f32(n: int) -> bytes:
        return struct.pack(f"<{n}f", *(rnd.uniform(-1, 1) for _ in range(n)))

    kernel = pb.RunKernelRequest(kernel="cosine_topk", params={"k": 5.0})
    kernel.inputs["query"].CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1, 64], raw=f32(64)))
    kernel.inputs["matrix"].CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[500, 64], raw=f32(500 * 64)))
    value = bytes(rnd.getrandbits(8) for _ in range(256))
    timings = []
    for j in range(8):
        timings.append(pb.RecordTimingsRequest(ops=[
            pb.OpObservations(op="llm_call", durations_seconds=[rnd.uniform(0.05, 2.0) for _ in range(10)], errors=j % 2),
            pb.OpObservations(op="retrieval", durations_seconds=[rnd.uniform(0.001, 0.05) for _ in range(10)]),
        ]).SerializeToString())
    return {
        "Heartbeat": [pb.HeartbeatRequest(sequence=i).SerializeToString() for i in range(1, 9)],
        "CacheGet": [pb.CacheGetRequest(key=f"load/{j}").SerializeToString() for j in range(1000)],
        "CachePut": [pb.CachePutRequest(key=f"load/{j}", value=value).SerializeToString() for j in range(1000)],
        "RecordTimings": timings,
        "RunKernel": [kernel.SerializeToString()],
    }


class Target:
    """One server under load: `clients` channels and a call plan (method, request bytes) per call index."""

    def __init__(self, spec: dict[str, Any], clients: int, seed: int = 7) -> None:
        self.name: str = spec["name"]
        self.kind: str = spec["kind"]  # "agent" or "bare"
        self.address: str = spec["target"]
        self.pid: int | None = spec.get("pid")
        self.channels = [channel(self.address, i) for i in range(clients)]
        if self.kind == "agent":
            reqs = mix_requests()
            methods = [m for m, _ in MIX]
            self.calls: list[dict[str, Raw]] = [{m: ch.unary_unary(AGENT + m) for m in methods}
                                                for ch in self.channels]
            rnd = random.Random(seed)
            plan_methods = rnd.choices(methods, weights=[w for _, w in MIX], k=10_007)
            self.plan = [(m, reqs[m][rnd.randrange(len(reqs[m]))]) for m in plan_methods]
        else:
            self.calls = [{"Empty": ch.unary_unary(EMPTY_METHOD)} for ch in self.channels]
            self.plan = [("Empty", b"")]

    async def connect(self) -> None:
        """Connect every channel and make one call on each (so no connection set-up is measured)."""
        await asyncio.gather(*(ch.channel_ready() for ch in self.channels))
        first = "Heartbeat" if self.kind == "agent" else "Empty"
        req = pb.HeartbeatRequest().SerializeToString() if self.kind == "agent" else b""
        await asyncio.gather(*(c[first](req, timeout=30) for c in self.calls))

    def call(self, i: int, timeout: float) -> Awaitable[Any]:
        """Call number i of the plan on channel i % clients."""
        method, req = self.plan[i % len(self.plan)]
        return self.calls[i % len(self.calls)][method](req, timeout=timeout)

    async def close(self) -> None:
        """Close every channel."""
        await asyncio.gather(*(ch.close() for ch in self.channels))


async def open_loop(target: Target, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
    """Send round(rate*seconds) calls at t0 + i/rate; latency is measured from the scheduled time."""
    loop = asyncio.get_running_loop()
    n = max(1, int(round(rate * seconds)))
    lat = [math.nan] * n
    lag = [0.0] * n
    errors: Counter[str] = Counter()
    pending: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate

    async def one(i: int, scheduled: float) -> None:
        lag[i] = loop.time() - scheduled
        try:
            await target.call(i, timeout)
        except aio.AioRpcError as exc:
            errors[exc.code().name] += 1
        lat[i] = loop.time() - scheduled

    cpu0, wall0, own0, busy0 = _server_cpu(target.pid), time.monotonic(), time.process_time(), _machine_busy()
    psi0 = cpu_pressure_us()
    t0 = loop.time() + 0.01
    i = 0
    while i < n:
        now = loop.time()
        while i < n and t0 + i * interval <= now:
            task = loop.create_task(one(i, t0 + i * interval))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i * interval - loop.time()))
    last_send = loop.time()
    await asyncio.gather(*list(pending))
    wall = time.monotonic() - wall0
    server_cpu = _server_cpu(target.pid) - cpu0
    own_cpu = time.process_time() - own0
    busy = _machine_busy() - busy0
    psi1 = cpu_pressure_us()
    pressure = (psi1 - psi0) / 1e6 / wall if psi0 is not None and psi1 is not None else None
    done = [x for x in lat if not math.isnan(x)]  # failed calls included: errors belong in the tail
    by_method: dict[str, list[float]] = {}
    for i, x in enumerate(lat):
        by_method.setdefault(target.plan[i % len(target.plan)][0], []).append(x)
    send_span = max(last_send - t0, 1e-9)
    return {
        "offered": rate,
        "calls": n,
        "seconds": seconds,
        "p50_ms": percentile(done, 0.5) * 1e3,
        "p90_ms": percentile(done, 0.9) * 1e3,
        "p99_ms": percentile(done, 0.99) * 1e3,
        "max_ms": max(done) * 1e3 if done else math.nan,
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "lag_p99_ms": percentile(lag, 0.99) * 1e3,
        "achieved_send_rate": (n - 1) / send_span if n > 1 else rate,
        "server_cpu_cores": server_cpu / wall if target.pid else None,
        "generator_cpu_cores": own_cpu / wall,
        "machine_busy_cores": busy / wall,
        "cpu_pressure": pressure,
        "_lat": done,
        "_by_method": by_method,
    }


async def _targets(spec: dict[str, Any], clients: int) -> list[Target]:
    """Build and connect every target of a spec."""
    targets = [Target(t, clients) for t in spec["targets"]]
    for t in targets:
        await t.connect()
    return targets


async def mode_open(spec: dict[str, Any]) -> dict[str, Any]:
    """Offered rate for `seconds` per target, split into `segments` alternating between targets."""
    targets = await _targets(spec, spec.get("clients", 100))
    rate, seconds, segments = spec["rate"], spec["seconds"], spec.get("segments", 1)
    timeout = spec.get("timeout", 5.0)
    per: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for t in targets:  # short warm-up at the same rate (caches, allocator, connections)
        await open_loop(t, rate, spec.get("warmup", 0.5), timeout)
    for s in range(segments):
        order = targets if s % 2 == 0 else targets[::-1]
        for t in order:
            per[t.name].append(await open_loop(t, rate, seconds / segments, timeout))
    out: dict[str, Any] = {}
    for name, segs in per.items():
        lat = [x for seg in segs for x in seg["_lat"]]
        methods: dict[str, list[float]] = {}
        for seg in segs:
            for m, xs in seg["_by_method"].items():
                methods.setdefault(m, []).extend(xs)
        out[name] = {
            "offered": rate,
            "seconds": seconds,
            "calls": sum(seg["calls"] for seg in segs),
            "p50_ms": percentile(lat, 0.5) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": max(lat) * 1e3 if lat else math.nan,
            "errors": sum(seg["errors"] for seg in segs),
            "error_codes": dict(sum((Counter(seg["error_codes"]) for seg in segs), Counter())),
            "lag_p99_ms": max(seg["lag_p99_ms"] for seg in segs),
            "achieved_send_rate": min(seg["achieved_send_rate"] for seg in segs),
            "server_cpu_cores": [seg["server_cpu_cores"] for seg in segs],
            "generator_cpu_cores": statistics.mean(seg["generator_cpu_cores"] for seg in segs),
            "p99_ms_by_method": {m: percentile(xs, 0.99) * 1e3 for m, xs in sorted(methods.items())},
            "p50_ms_by_method": {m: percentile(xs, 0.5) * 1e3 for m, xs in sorted(methods.items())},
            "machine_busy_cores": statistics.mean(seg["machine_busy_cores"] for seg in segs),
            "cpu_pressure": (statistics.mean(seg["cpu_pressure"] for seg in segs)
                             if all(seg["cpu_pressure"] is not None for seg in segs) else None),
        }
    for t in targets:
        await t.close()
    return out


async def mode_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """Step the offered rate up until p99 >= limit, an error, or a missed schedule; report every step.

    At each rate every still-passing target runs one step (order rotating), so a burst of noise from
    other processes hits the targets alike; a failed step is retried once before it counts, so one
    noisy 2-second window does not end a target's search.
    """
    targets = await _targets(spec, spec.get("clients", 100))
    limit = spec["p99_limit_ms"]
    timeout = spec.get("timeout", 2.0)
    out: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for t in targets:
        await open_loop(t, spec["rates"][0], 0.5, timeout)  # warm-up

    async def step(t: Target, rate: float) -> bool:
        for attempt in range(2):
            r = await open_loop(t, rate, spec["step_seconds"], timeout)
            r.pop("_lat")
            r.pop("_by_method")
            # a step passes only if the rate was really offered (the generator kept its schedule)
            sent_ok = r["achieved_send_rate"] >= 0.95 * rate
            r["passed"] = r["p99_ms"] < limit and r["errors"] == 0 and sent_ok
            r["cause"] = None if r["passed"] else _cause(r, sent_ok)
            r["attempt"] = attempt + 1
            out[t.name].append(r)
            if r["passed"]:
                return True
        return False

    budget = spec.get("max_seconds")  # a time budget (--quick): no new rate level once it is spent
    started = time.monotonic()
    active = list(targets)
    for n, rate in enumerate(spec["rates"]):
        if budget is not None and time.monotonic() - started > budget:
            for t in active:
                out[t.name][-1]["budget_exhausted"] = True
            break
        k = n % len(active) if active else 0
        results = {t.name: await step(t, rate) for t in active[k:] + active[:k]}
        active = [t for t in active if results[t.name]]
        if not active:
            break
    # one bisection step between the last passed and the first failed rate (a 1k grid is coarse)
    for t in targets:
        steps = out[t.name]
        passed = [x["offered"] for x in steps if x["passed"]]
        failed = [x["offered"] for x in steps if not x["passed"]]
        if passed and failed and min(failed) - max(passed) > 500 and not (budget and time.monotonic() - started > budget):
            mid = round((max(passed) + min(failed)) / 2 / 250) * 250
            await step(t, mid)
    for t in targets:
        await t.close()
    return out


def _cause(r: dict[str, Any], sent_ok: bool) -> str:
    """Why a step failed, from who used the CPU: the server, the load generator, or everything together."""
    import os

    ncpu = len(os.sched_getaffinity(0))
    server, gen, busy = r["server_cpu_cores"] or 0.0, r["generator_cpu_cores"], r["machine_busy_cores"]
    pressure = r.get("cpu_pressure") or 0.0
    if server >= 0.85:
        who = "server"
    elif gen >= 0.85:
        who = "generator"
    elif busy >= 0.85 * ncpu or pressure >= 0.25:
        who = "machine"
    else:
        who = "unclear"
    return who if sent_ok else f"{who}; generator behind schedule"


async def mode_closed(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop calls/s per target, rounds alternating between targets."""
    nch = spec.get("channels", 4)
    conc = spec["concurrency"]
    targets = []
    for t in spec["targets"]:
        tgt = Target(t, nch)
        req = pb.HeartbeatRequest(sequence=1).SerializeToString() if tgt.kind == "agent" else b""
        method = "Heartbeat" if tgt.kind == "agent" else "Empty"
        tgt.plan = [(method, req)]
        await tgt.connect()
        targets.append(tgt)
    loop = asyncio.get_running_loop()

    async def run(t: Target, seconds: float) -> dict[str, float]:
        count = 0
        errors = 0
        stop_at = loop.time() + seconds

        async def worker(w: int) -> None:
            nonlocal count, errors
            i = w
            while loop.time() < stop_at:
                try:
                    await t.call(i, 10.0)
                    count += 1
                except aio.AioRpcError:
                    errors += 1
                i += conc

        cpu0, own0, t0 = _server_cpu(t.pid), time.process_time(), loop.time()
        await asyncio.gather(*(worker(w) for w in range(conc)))
        wall = loop.time() - t0
        return {"rate": count / wall, "errors": errors, "server_cpu_cores": (_server_cpu(t.pid) - cpu0) / wall,
                "client_cpu_cores": (time.process_time() - own0) / wall}

    for t in targets:
        await run(t, spec.get("warmup", 0.5))
    per: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for r in range(spec["rounds"]):
        for t in (targets if r % 2 == 0 else targets[::-1]):
            per[t.name].append(await run(t, spec["seconds"]))
    for t in targets:
        await t.close()
    return per


async def mode_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Sequential calls in interleaved blocks; per target p50/p90/p99 in microseconds."""
    fns: dict[str, Callable[[], Awaitable[Any]]] = {}
    chans = []
    for t in spec["targets"]:
        ch = channel(t["target"])
        chans.append(ch)
        await ch.channel_ready()
        if t["kind"] == "agent":
            stub = pb_grpc.AgentStub(ch)
            req = pb.HeartbeatRequest(sequence=1)
            fns[t["name"]] = partial(stub.Heartbeat, req, timeout=10)
        else:
            mc: Raw = ch.unary_unary(EMPTY_METHOD)
            fns[t["name"]] = partial(mc, b"", timeout=10)
    names = list(fns)
    pc = time.perf_counter
    for name in names:
        for _ in range(spec["warmup"]):
            await fns[name]()
    lat: dict[str, list[float]] = {n: [] for n in names}
    round_p50: dict[str, list[float]] = {n: [] for n in names}
    budget = spec.get("max_seconds")  # a time budget (--quick): whole rounds only, at least 4
    started = time.monotonic()
    rounds_done = 0
    for r in range(spec["rounds"]):
        if budget is not None and r >= 4 and time.monotonic() - started > budget:
            break
        rounds_done += 1
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, out = fns[name], []
            for _ in range(spec["block"]):
                t0 = pc()
                await fn()
                out.append(pc() - t0)
            lat[name].extend(out)
            round_p50[name].append(percentile(out, 0.5) * 1e6)
    for ch in chans:
        await ch.close()
    return {n: {"n": len(v), "rounds": rounds_done, "p50_us": percentile(v, 0.5) * 1e6, "p90_us": percentile(v, 0.9) * 1e6,
                "p99_us": percentile(v, 0.99) * 1e6, "max_us": max(v) * 1e6, "round_p50_us": round_p50[n]}
            for n, v in lat.items()}


async def mode_watch(spec: dict[str, Any]) -> None:
    """Count CUSTOM events; after each round's end marker print {received, dropped, t_end}.

    The agent publishes a round's events and then one marker event (attribute end=1). Dropping
    removes the oldest buffered events, never the newest, so the marker always arrives. Times are
    time.monotonic() (CLOCK_MONOTONIC is system-wide on Linux, comparable with the agent's).
    """
    ch = channel(spec["target"])
    stub = pb_grpc.AgentStub(ch)
    stream = stub.WatchEvents(pb.WatchEventsRequest(types=[pb.EVENT_TYPE_CUSTOM], max_batch=spec.get("max_batch", 10_000)))
    first = True
    received = dropped = batches = 0
    t_first = 0.0
    async for batch in stream:
        if first:
            first = False
            _out({"subscribed": True})
            continue
        now = time.monotonic()
        if received == 0:
            t_first = now
        batches += 1
        dropped += batch.dropped
        events = batch.events
        received += len(events)
        if events and events[-1].attributes.get("end") == "1":
            _out({"received": received - 1, "dropped": dropped, "batches": batches, "t_first": t_first, "t_end": now})
            received = dropped = batches = 0
    await ch.close()


MODES = {"latency": mode_latency, "closed": mode_closed, "open": mode_open, "steps": mode_steps, "watch": mode_watch}


def main(argv: list[str]) -> None:
    """`python -m bench.loadgen MODE SPEC_JSON`."""
    mode, spec = argv[0], json.loads(argv[1])
    result = asyncio.run(MODES[mode](spec))
    if result is not None:
        _out(result)


if __name__ == "__main__":
    main(sys.argv[1:])
