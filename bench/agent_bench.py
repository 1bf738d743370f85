"""Sidecar benchmarks: latency, throughput, events, cache, footprint and load, each beside a baseline.

Every figure starts the real sidecar (`perfpilot-sidecar` console script, or bench.event_agent which
runs the real AgentApp) in its own process on a temporary Unix socket and a free loopback port,
waits for grpc.health SERVING, and drives it from a separate client process (bench.loadgen,
bench.cache_client). Baselines run in the same run, interleaved where that is possible, so machine
noise hits both sides of each ratio:

* bare grpc.aio server (bench.bare_server) for heartbeat latency, one-core throughput, idle CPU and
  load: the floor the gRPC stack itself imposes;
* publish-only rate for events_per_s; recompute for cache hits; minimal Python processes for RSS.

`run(quick, want)` returns {key: entry}; `want(key)` selects figures (bench.run's --only).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, cast

from bench import l1_bench
from bench.common import Entry, entry, failed_entry, free_port, median
from bench.procs import PY, Child, ChildFailed, Procs, tree_cpu_ns, tree_cpu_seconds, tree_rss, wait_serving
from perfpilot_contract.limits import KERNEL_NAMES

Want = Callable[[str], bool]
ALL_KERNELS = list(KERNEL_NAMES)
MB = 1e6

UNITS: dict[str, str] = {
    "heartbeat_p50_us_uds": "us",
    "heartbeat_p99_us_uds": "us",
    "heartbeat_p99_us_tcp": "us",
    "rps_one_core": "calls/s",
    "events_per_s": "events/s",
    "cache_hit_speedup": "x",
    "kernel_cache_hit_speedup": "x",
    "idle_rss_mb_heartbeat_only": "MB",
    "idle_rss_mb_kernels_warm": "MB",
    "idle_cpu_millicores": "millicores",
    "load_p50_ms": "ms",
    "load_p99_ms": "ms",
    "load_errors": "calls",
    "load_calls_per_s": "calls/s",
    **l1_bench.UNITS,
}
"""Every key this module produces, with its unit (also used for placeholders when a phase fails)."""


def _loadgen(procs: Procs, mode: str, spec: dict[str, Any], *, cpu: int | None = None, timeout: float = 600) -> Any:
    """Run one bench.loadgen process to completion and return its JSON result."""
    child = procs.start(f"loadgen-{mode}", [PY, "-m", "bench.loadgen", mode, json.dumps(spec)], cpu=cpu)
    try:
        return child.read_json(timeout)
    finally:
        procs.stop(child)


def _sidecar(procs: Procs, name: str, *, cpu: int | None = None, config: dict[str, Any] | None = None,
             tcp: bool = False) -> tuple[Child, str, int]:
    """Start a sidecar and wait until SERVING; returns (child, unix target, tcp port or -1)."""
    sock = procs.path(f"{name}.sock")
    port = free_port() if tcp else -1
    child = procs.sidecar(name, socket_path=sock, port=port, cpu=cpu, config=config)
    wait_serving(child, f"unix:{sock}")
    return child, f"unix:{sock}", port


def _bare(procs: Procs, name: str, *, cpu: int | None = None, tcp: bool = False) -> tuple[Child, str, int]:
    """Start the bare baseline server and wait until SERVING."""
    sock = procs.path(f"{name}.sock")
    port = free_port() if tcp else -1
    child = procs.bare(name, socket_path=sock, port=port, cpu=cpu)
    wait_serving(child, f"unix:{sock}")
    return child, f"unix:{sock}", port


# -- heartbeat latency and one-core throughput -------------------------------------------------------


def transport(quick: bool, want: Want) -> dict[str, Entry]:
    """heartbeat_* (sequential, interleaved blocks) and rps_one_core (closed loop): servers on one CPU, client on another."""
    out: dict[str, Entry] = {}
    usable = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (usable[0], usable[1]) if len(usable) > 1 else (None, None)
    setup = (f"servers pinned to CPU {server_cpu}, client process pinned to CPU {client_cpu}" if client_cpu is not None
             else "NOT pinned: only one usable CPU")
    with Procs() as procs:
        s, s_uds, s_port = _sidecar(procs, "sidecar", cpu=server_cpu, tcp=True)
        b, b_uds, b_port = _bare(procs, "bare", cpu=server_cpu, tcp=True)
        if any(want(k) for k in ("heartbeat_p50_us_uds", "heartbeat_p99_us_uds", "heartbeat_p99_us_tcp")):
            rounds, block = (12, 250) if quick else (30, 500)
            spec: dict[str, Any] = {"rounds": rounds, "block": block, "warmup": 200, "max_seconds": 25.0 if quick else None, "targets": [
                {"name": "s_uds", "kind": "agent", "target": s_uds},
                {"name": "b_uds", "kind": "bare", "target": b_uds},
                {"name": "s_tcp", "kind": "agent", "target": f"127.0.0.1:{s_port}"},
                {"name": "b_tcp", "kind": "bare", "target": f"127.0.0.1:{b_port}"},
            ]}
            r = _loadgen(procs, "latency", spec, cpu=client_cpu)
            n, rounds = r["s_uds"]["n"], r["s_uds"]["rounds"]
            common = (f"{n} sequential calls per series in {rounds} interleaved blocks of {block} (sidecar UDS, bare UDS, "
                      f"sidecar TCP, bare TCP, order rotating), grpc.aio client; sidecar: Heartbeat via the generated "
                      f"stub; baseline: bare grpc.aio server, empty raw-bytes unary call, same transport; {setup}.")
            su, bu, st, bt = r["s_uds"], r["b_uds"], r["s_tcp"], r["b_tcp"]
            out["heartbeat_p50_us_uds"] = entry(su["p50_us"], "us", bu["p50_us"],
                                                f"p50 round trip over the Unix socket. {common} "
                                                f"Median of per-block p50s: {median(su['round_p50_us']):.0f} vs "
                                                f"{median(bu['round_p50_us']):.0f} us.")
            out["heartbeat_p99_us_uds"] = entry(su["p99_us"], "us", bu["p99_us"],
                                                f"p99 round trip over the Unix socket (p90 {su['p90_us']:.0f} vs "
                                                f"{bu['p90_us']:.0f} us; max {su['max_us']:.0f} vs {bu['max_us']:.0f} us). {common}")
            out["heartbeat_p99_us_tcp"] = entry(st["p99_us"], "us", bt["p99_us"],
                                                f"p99 round trip over loopback TCP (p50 {st['p50_us']:.0f} vs "
                                                f"{bt['p50_us']:.0f} us); the sidecar's plaintext TCP listener is its "
                                                f"health port (a method-allowlist interceptor; Heartbeat is allowed). {common}")
        if want("rps_one_core"):
            rounds, seconds = (8, 1.0) if quick else (20, 1.5)
            spec = {"concurrency": 64, "channels": 4, "seconds": seconds, "rounds": rounds, "warmup": 0.5,
                    "targets": [{"name": "s", "kind": "agent", "target": s_uds, "pid": s.pid},
                                {"name": "b", "kind": "bare", "target": b_uds, "pid": b.pid}]}
            r = _loadgen(procs, "closed", spec, cpu=client_cpu)
            srate = median([x["rate"] for x in r["s"]])
            brate = median([x["rate"] for x in r["b"]])
            scpu = median([x["server_cpu_cores"] for x in r["s"]])
            bcpu = median([x["server_cpu_cores"] for x in r["b"]])
            ccpu = max(median([x["client_cpu_cores"] for x in r["s"]]), median([x["client_cpu_cores"] for x in r["b"]]))
            s_us = median([x["server_cpu_cores"] / x["rate"] * 1e6 for x in r["s"] if x["rate"]])
            b_us = median([x["server_cpu_cores"] / x["rate"] * 1e6 for x in r["b"] if x["rate"]])
            errors = sum(x["errors"] for x in r["s"] + r["b"])
            bound = ("server-bound" if min(scpu, bcpu) >= 0.85 else
                     f"NOT saturating the server core (server used {scpu:.2f} / {bcpu:.2f} cores; the core is shared "
                     f"with other work on this machine, or the client is the limit: it used {ccpu:.2f} cores)")
            out["rps_one_core"] = entry(
                srate, "calls/s", brate,
                f"closed loop, 64 calls in flight over 4 channels on the Unix socket, Heartbeat (sidecar) vs empty "
                f"call (bare), median of {rounds} x {seconds:g}s rounds per server, alternating; {setup}. "
                f"Server CPU per call: sidecar {s_us:.0f} us vs bare {b_us:.0f} us (ratio {b_us / s_us:.2f}, the "
                f"noise-robust view of the same thing); {bound}. errors: {errors}.")
    return out


# -- events ------------------------------------------------------------------------------------------------


def events(quick: bool, want: Want) -> dict[str, Entry]:
    """events_per_s: WatchEvents end to end vs publishing with no watcher, in one agent process."""
    n, rounds, chunk = (100_000, 3, 500) if quick else (300_000, 7, 500)
    with Procs() as procs:
        sock = procs.path("events.sock")
        agent = procs.start("event-agent", [PY, "-m", "bench.event_agent", "--socket", sock, "--port", "-1",
                                            "--metrics-port", "-1", "--log-level", "WARNING"], stdin=True)
        wait_serving(agent, f"unix:{sock}")

        def publish() -> dict[str, Any]:
            agent.send(f"publish {n} {chunk}")
            return cast(dict[str, Any], agent.read_json(120))

        publish()  # warm-up (allocator, code paths)
        base = []
        for _ in range(2):
            r = publish()
            assert r["watchers"] == 0
            base.append(n / (r["t1"] - r["t0"]))
        watcher = procs.start("watcher", [PY, "-m", "bench.loadgen", "watch", json.dumps({"target": f"unix:{sock}"})])
        assert watcher.read_json(60).get("subscribed")
        e2e, pub_rates, dropped, batches = [], [], 0, 0
        for _ in range(rounds):
            r = publish()
            c = watcher.read_json(120)
            assert r["watchers"] == 1
            e2e.append(c["received"] / (c["t_end"] - r["t0"]))
            pub_rates.append(n / (r["t1"] - r["t0"]))
            dropped += c["dropped"]
            batches += c["batches"]
        procs.stop(watcher)
        r = publish()
        base.append(n / (r["t1"] - r["t0"]))
    value, baseline = median(e2e), median(base)
    return {"events_per_s": entry(
        value, "events/s", baseline,
        f"{n} EVENT_TYPE_CUSTOM events per round published inside the real AgentApp (bench.event_agent, "
        f"app.events.publish, yielding to the loop every {chunk}), received by a WatchEvents consumer in another "
        f"process over the Unix socket (max_batch 10000, default --event-buffer 10000); rate = events received / "
        f"(last event received - first publish), median of {rounds} rounds. Baseline: the same publishing with no "
        f"watcher (publish-only rate, median of {len(base)} rounds before and after). Publishing with the watcher "
        f"attached ran at {median(pub_rates):,.0f}/s (the stream writer shares the agent's loop). "
        f"Dropped: {dropped}; {batches / rounds:.0f} batches per round. Target >= 100,000 events/s.")}


# -- footprint, cache and load (one kernels-warm sidecar) ----------------------------------------------

RSS_PROBE = "import sys, grpc, prometheus_client, psutil; print('ready', flush=True); sys.stdin.read()"
KERNEL_PROBE = (
    "import os, sys; os.environ['NUMBA_NUM_THREADS'] = sys.argv[1]\n"
    "from perfpilot_agent.kernels import jit\n"
    "jit.warm(sys.argv[2].split(','), variants=(False, True))\n"
    "print('ready', flush=True); sys.stdin.read()"
)


def _probe(procs: Procs, name: str, code: str, *args: str) -> Child:
    """A baseline process for RSS: prints 'ready' once loaded, then waits for stdin to close."""
    return procs.start(name, [PY, "-c", code, *args], stdin=True)


def footprint_cache_load(quick: bool, want: Want) -> dict[str, Entry]:
    """idle_*, cache_hit_speedup, kernel_cache_hit_speedup, load_* on one sidecar with all kernels warm."""
    out: dict[str, Entry] = {}
    workers = 2
    kernel_cfg = {"kernels": {"warm": ALL_KERNELS}, "pools": {"processWorkers": workers}}
    with Procs() as procs:
        k, k_uds, _ = _sidecar(procs, "sidecar-kernels", config=kernel_cfg)
        b, b_uds, _ = _bare(procs, "bare")
        if any(want(x) for x in ("idle_rss_mb_heartbeat_only", "idle_rss_mb_kernels_warm", "idle_cpu_millicores")):
            out.update(_footprint(procs, quick, want, k, b, workers))
        if any(want(x) for x in ("load_p50_ms", "load_p99_ms", "load_errors")):
            out.update(_load(procs, quick, k, k_uds, b, b_uds))
        if want("load_calls_per_s"):
            out.update(_load_steps(procs, quick, k, k_uds, b, b_uds))
        if want("cache_hit_speedup") or want("kernel_cache_hit_speedup"):
            out.update(_cache(procs, quick, k_uds))
    return out


def _heartbeats(target: str, n: int) -> None:
    """n sequential Heartbeats (sync client in this process: RSS is not a latency figure)."""
    import grpc

    from perfpilot.v1 import agent_pb2 as pb
    from perfpilot.v1 import agent_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.AgentStub(ch)
        for i in range(n):
            stub.Heartbeat(pb.HeartbeatRequest(sequence=i), timeout=10)


def _pct(x: float | None) -> str:
    """A 0..1 fraction as a percentage ('n/a' when unknown)."""
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _role(cmdline: str) -> str:
    """Short name of a process in the sidecar's tree, from its command line."""
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "spawn" in cmdline:
        return "worker"
    return "agent"


def _footprint(procs: Procs, quick: bool, want: Want, k: Child, b: Child, workers: int) -> dict[str, Entry]:
    """RSS of a fresh heartbeat-only sidecar and of the kernels-warm tree vs minimal processes; idle CPU."""
    out: dict[str, Entry] = {}
    h, h_uds, _ = _sidecar(procs, "sidecar-idle")
    grpc_probe = _probe(procs, "rss-probe", RSS_PROBE)
    from perfpilot_agent.kernels.cpus import available_cpus  # the rule the pool uses for its workers (no numba)

    cpus = str(available_cpus())
    kprobes = [_probe(procs, f"numba-probe-{i}", KERNEL_PROBE, cpus, ",".join(ALL_KERNELS)) for i in range(workers)]
    for p in (grpc_probe, *kprobes):
        if p.readline(180) != "ready":
            raise ChildFailed(f"{p.name} did not get ready\n{p.log_tail()}")
    _heartbeats(h_uds, 200)
    _heartbeats(f"unix:{procs.path('sidecar-kernels.sock')}", 200)
    import psutil

    h_rss = psutil.Process(h.pid).memory_info().rss
    probe_rss = psutil.Process(grpc_probe.pid).memory_info().rss
    k_rss, parts = tree_rss(k.pid)
    kprobe_rss = [psutil.Process(p.pid).memory_info().rss for p in kprobes]
    h_uss: float
    try:
        h_uss = psutil.Process(h.pid).memory_full_info().uss
    except psutil.AccessDenied:
        h_uss = math.nan
    for p in (grpc_probe, *kprobes):
        procs.stop(p)
    if want("idle_rss_mb_heartbeat_only"):
        out["idle_rss_mb_heartbeat_only"] = entry(
            h_rss / MB, "MB", probe_rss / MB,
            f"RSS of a fresh heartbeat-only sidecar after 200 Heartbeats (USS {h_uss / MB:.1f} MB); baseline: a "
            f"python process that only imports grpc, prometheus_client and psutil. Target <= 50 MB.")
    if want("idle_rss_mb_kernels_warm"):
        base = h_rss + sum(kprobe_rss)
        breakdown = ", ".join(f"{_role(name)} {rss / MB:.0f}" for name, rss in parts)
        out["idle_rss_mb_kernels_warm"] = entry(
            k_rss / MB, "MB", base / MB,
            f"RSS of the whole process tree of a sidecar with every kernel warm ({', '.join(ALL_KERNELS)}, "
            f"{workers} workers, parallel): {len(parts)} processes ({breakdown} MB; multiprocessing's resource "
            f"tracker included), after 200 Heartbeats. Baseline: the heartbeat-only sidecar "
            f"({h_rss / MB:.0f} MB) + {workers} x a python process that imports numba and warms the same kernels "
            f"(serial and parallel, NUMBA_NUM_THREADS={cpus}: {', '.join(f'{r / MB:.0f}' for r in kprobe_rss)} MB). "
            f"RSS counts shared library pages once per process on both sides.")
    if want("idle_cpu_millicores"):
        window = 5.0 if quick else 20.0
        pids = {"kernels": k.pid, "idle": h.pid, "bare": b.pid}
        ns0 = {n: tree_cpu_ns(p) for n, p in pids.items()}
        ps0 = {n: tree_cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(window)  # the measurement window itself (all three processes idle side by side)
        wall = time.monotonic() - t0
        mc = {n: (tree_cpu_ns(p) - ns0[n]) / 1e9 / wall * 1000 for n, p in pids.items()}
        ps = {n: (tree_cpu_seconds(p) - ps0[n]) / wall * 1000 for n, p in pids.items()}
        out["idle_cpu_millicores"] = entry(
            mc["kernels"], "millicores", mc["bare"],
            f"CPU used over a {window:g}s idle window by the process tree of the kernels-warm sidecar (agent, "
            f"{workers} workers, resource tracker; every thread), from the scheduler's per-thread runtime "
            f"(/proc/<pid>/task/<tid>/schedstat, ns resolution; psutil cpu_times, which count 10 ms ticks, give "
            f"{ps['kernels']:.1f} vs {ps['bare']:.1f}). The heartbeat-only sidecar used {mc['idle']:.2f} millicores in "
            f"the same window. Baseline: the bare grpc.aio server, idle in the same window.")
    procs.stop(h)
    return out


def _cache(procs: Procs, quick: bool, target: str) -> dict[str, Entry]:
    """App-level cache hit vs recompute, and the agent's kernel result cache, via bench.cache_client."""
    repeats, hits = (7, 100) if quick else (15, 200)
    spec = {"target": target, "n": 50_000, "d": 384, "k": 10, "repeats": repeats, "hits_per_round": hits}
    child = procs.start("cache-client", [PY, "-m", "bench.cache_client", json.dumps(spec)])
    try:
        r = child.read_json(600)
    finally:
        procs.stop(child)
    desc = (f"cosine top-k (k=10) of a 1x384 query against a 50000x384 float32 embedding matrix "
            f"({r['matrix_mb']:.0f} MB) through RunKernel with perfpilot_client.AgentClient over the Unix socket "
            f"(the library passes the matrix through shared memory)")
    return {
        "cache_hit_speedup": entry(
            r["recompute_s"] / r["hit_s"], "x", 1.0,
            f"app-level result cache: recompute = {desc}: median {r['recompute_s'] * 1e3:.1f} ms; hit = CacheGet of "
            f"the packed result under a key derived from the query (digest + CacheGet + unpack): median "
            f"{r['hit_s'] * 1e6:.0f} us (p99 {r['hit_p99_s'] * 1e6:.0f} us, {r['hits']} hits). value = recompute / hit; "
            f"baseline 1.0 = recomputing. Target >= 100x."),
        "kernel_cache_hit_speedup": entry(
            r["kernel_nocache_s"] / r["kernel_hit_s"], "x", 1.0,
            f"RunKernel(use_cache=True) answered from the agent's digest-keyed cache (median "
            f"{r['kernel_hit_s'] * 1e3:.1f} ms) vs use_cache=False (median {r['kernel_nocache_s'] * 1e3:.1f} ms), "
            f"same {desc}, {r['repeats']} interleaved repeats. A hit still ships the matrix and hashes all of it "
            f"(XXH3-128) on every call to find the key: {r['digest_gbps']:.1f} GB/s here ({r['digest_ms']:.1f} ms "
            f"for this matrix, measured in the same run), while a miss also runs the kernel over it; the cache "
            f"saves the compute, not the transfer or the read of the inputs."),
    }


def _load(procs: Procs, quick: bool, k: Child, k_uds: str, b: Child, b_uds: str) -> dict[str, Entry]:
    """1,000 calls/s open loop from 100 clients: sidecar mix vs bare server, alternating segments."""
    from bench.loadgen import MIX_TEXT

    seconds, segments = (8.0, 4) if quick else (30.0, 6)  # short alternating segments spread bursts of host load
    spec = {"rate": 1000, "seconds": seconds, "segments": segments, "clients": 100, "timeout": 5.0, "warmup": 1.0,
            "targets": [{"name": "s", "kind": "agent", "target": k_uds, "pid": k.pid},
                        {"name": "b", "kind": "bare", "target": b_uds, "pid": b.pid}]}
    r = _loadgen(procs, "open", spec)
    s, bb = r["s"], r["b"]
    cpu = [x for x in s["server_cpu_cores"] if x is not None]
    server_cores = statistics.mean(cpu) if cpu else math.nan
    other = max(0.0, s["machine_busy_cores"] - server_cores - s["generator_cpu_cores"])
    gen = (f" The generator kept its schedule (sent {s['achieved_send_rate']:.0f}/s, send lag p99 "
           f"{s['lag_p99_ms']:.1f} ms)" if s["achieved_send_rate"] >= 0.95 * 1000 and s["lag_p99_ms"] < 10 else
           f" LOAD GENERATOR LAGGED (sent {s['achieved_send_rate']:.0f}/s, its send lag p99 {s['lag_p99_ms']:.1f} ms "
           f"is part of the latencies)")
    per_method = ", ".join(f"{m} {s['p50_ms_by_method'][m]:.1f}/{x:.1f}" for m, x in s["p99_ms_by_method"].items())
    bcpu = [x for x in bb["server_cpu_cores"] if x is not None]
    bare_cores = statistics.mean(bcpu) if bcpu else math.nan
    bother = max(0.0, bb["machine_busy_cores"] - bare_cores - bb["generator_cpu_cores"])
    machine = (f". Sidecar p50/p99 ms by method: {per_method}. CPU cores in use (of {len(os.sched_getaffinity(0))}) "
               f"during the sidecar / bare segments: server {server_cores:.2f} / {bare_cores:.2f}, generator "
               f"{s['generator_cpu_cores']:.2f} / {bb['generator_cpu_cores']:.2f}, other processes on the host "
               f"{other:.2f} / {bother:.2f}; CPU pressure (PSI: share of time runnable tasks waited for a CPU) "
               f"{_pct(s['cpu_pressure'])} / {_pct(bb['cpu_pressure'])}.")
    desc = (f"open loop, 1,000 calls/s offered in total by 100 clients (one channel and connection each) in a "
            f"separate load-generator process, Unix socket, {seconds:g}s per server"
            f"{' (quick run: 30 s in --full)' if quick else ''} in {segments} alternating segments after a 1 s "
            f"warm-up; latency from each call's scheduled send time (no coordinated omission). Sidecar (kernels warm, "
            f"2 workers) mix: {MIX_TEXT}. Baseline: the bare grpc.aio server under the same schedule of empty calls."
            f"{gen}{machine}")
    return {
        "load_p50_ms": entry(s["p50_ms"], "ms", bb["p50_ms"], f"{desc}"),
        "load_p99_ms": entry(s["p99_ms"], "ms", bb["p99_ms"],
                             f"p99 (max {s['max_ms']:.1f} ms vs {bb['max_ms']:.1f} ms). {desc} Target < 50 ms."),
        "load_errors": entry(s["errors"], "calls", bb["errors"],
                             f"calls that failed (any non-OK status; deadline 5 s) out of {s['calls']} "
                             f"({s['error_codes'] or 'none'}); baseline: errors of the bare server "
                             f"({bb['error_codes'] or 'none'}). Target 0. {desc}"),
    }


def _load_steps(procs: Procs, quick: bool, k: Child, k_uds: str, b: Child, b_uds: str) -> dict[str, Entry]:
    """Highest offered rate with p99 < 100 ms and no errors, sidecar vs bare, and why the search stopped."""

    step = 2.0 if quick else 5.0
    rates = [1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 16000]
    spec = {"rates": rates, "step_seconds": step, "p99_limit_ms": 100.0, "clients": 100, "timeout": 2.0,
            "max_seconds": 40.0 if quick else None,
            "targets": [{"name": "s", "kind": "agent", "target": k_uds, "pid": k.pid},
                        {"name": "b", "kind": "bare", "target": b_uds, "pid": b.pid}]}
    r = _loadgen(procs, "steps", spec)

    causes = {
        "server": "the server saturated its core",
        "generator": "the LOAD GENERATOR saturated its core first (the server's limit is at least the last passed rate)",
        "machine": "the machine's CPUs were exhausted or contended (server + load generator + other processes)",
        "unclear": "neither the server, the generator nor the machine was CPU-bound",
    }

    def best(steps: list[dict[str, Any]]) -> tuple[float, str]:
        passed = {x["offered"] for x in steps if x["passed"]}
        failed = {x["offered"] for x in steps if not x["passed"]} - passed  # no attempt at that rate passed
        if not failed:
            if steps[-1].get("budget_exhausted"):
                return max(passed), (f"passed every step up to {max(passed):.0f}/s, then the quick run's 40 s search "
                                     f"budget was spent: a lower bound")
            return max(passed), f"passed every step up to {max(passed):.0f}/s (the highest tried)"
        # the lowest rate that failed both attempts: the limit's evidence
        last = [x for x in steps if x["offered"] == min(failed)][-1]
        who, _, behind = last["cause"].partition("; ")
        server, gen = last["server_cpu_cores"] or 0.0, last["generator_cpu_cores"]
        other = max(0.0, last["machine_busy_cores"] - server - gen)
        why = (f"failed twice at {last['offered']:.0f}/s (last try: p99 {last['p99_ms']:.0f} ms, errors "
               f"{last['errors']}, sent {last['achieved_send_rate']:.0f}/s; CPU cores used by the server {server:.2f}, "
               f"the generator {gen:.2f}, other processes {other:.2f}; CPU pressure {_pct(last.get('cpu_pressure'))}): "
               f"{causes[who]}" + (f"; {behind}" if behind else ""))
        return (max(passed) if passed else 0.0), why

    sv, swhy = best(r["s"])
    bv, bwhy = best(r["b"])
    trail = "; ".join(f"{x['offered'] / 1000:g}k{' (retry)' if x['attempt'] > 1 else ''}: p99 {x['p99_ms']:.0f} ms, "
                      f"server {x['server_cpu_cores'] or 0:.2f} cores" for x in r["s"])
    return {"load_calls_per_s": entry(
        sv, "calls/s", bv,
        f"highest offered rate (steps of {', '.join(f'{x / 1000:g}k' for x in rates)}, {step:g}s each, open loop, "
        f"then one bisection step, 100 clients, Unix socket, same mix as load_p99_ms; sidecar and bare stepped "
        f"together, a failed step retried once) with p99 < 100 ms, no errors and the schedule kept (sent >= 95% of offered). Sidecar {swhy}. Bare server {bwhy}. Sidecar steps: {trail}. The load generator "
        f"(one Python process) shares the 2 cores with the server and with whatever else runs on this host. "
        f"Target >= 2,000 calls/s.")}


# -- driver ---------------------------------------------------------------------------------------------

PHASES: list[tuple[tuple[str, ...], Callable[[bool, Want], dict[str, Entry]]]] = [
    (("heartbeat_p50_us_uds", "heartbeat_p99_us_uds", "heartbeat_p99_us_tcp", "rps_one_core"), transport),
    (("events_per_s",), events),
    (("idle_rss_mb_heartbeat_only", "idle_rss_mb_kernels_warm", "idle_cpu_millicores", "load_p50_ms", "load_p99_ms",
      "load_errors", "load_calls_per_s", "cache_hit_speedup", "kernel_cache_hit_speedup"), footprint_cache_load),
    (tuple(l1_bench.UNITS), l1_bench.run),
]


def run(quick: bool, want: Want = lambda key: True, log: Callable[[str], None] = print) -> dict[str, Entry]:
    """All sidecar figures (those `want` selects); a phase that fails yields NOT MEASURED entries, not a crash."""
    out: dict[str, Entry] = {}
    for keys, fn in PHASES:
        selected = [k for k in keys if want(k)]
        if not selected:
            continue
        t0 = time.monotonic()
        log(f"  {fn.__name__}: {', '.join(selected)} ...")
        try:
            res = fn(quick, want)
        except (ChildFailed, AssertionError, OSError, ValueError, KeyError) as exc:
            log(f"  {fn.__name__} FAILED: {type(exc).__name__}: {exc}")
            res = {}
            for key in selected:
                res[key] = failed_entry(UNITS[key], f"{fn.__name__} failed: {type(exc).__name__}: {str(exc)[:300]}")
        out.update({k: v for k, v in res.items() if want(k)})
        log(f"  {fn.__name__}: {time.monotonic() - t0:.1f}s")
    return out
