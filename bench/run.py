"""Benchmark driver: `python -m bench.run --quick|--full [--only PREFIX ...]`.

Runs the sidecar figures (bench.agent_bench: sidecar, baselines and clients in separate processes)
and the kernel figures (bench.kernels_bench, in a child process so its 600 MB of arrays and numba
threads are gone before anything else is measured), then writes

* bench/results/latest.json       {key: {value, unit, baseline, ratio, note}}, ratio = value / baseline
* bench/results/latest-meta.json  machine, versions, timestamp, mode, wall time
* bench/results/latest.md         the table (key, value, unit, baseline, ratio, target, met?) and notes

and prints the table. With --only the files are bench/results/partial*.{json,md} instead, so a
partial run never replaces a complete one. Every child process is stopped on exit, Ctrl-C and
SIGTERM included. Exit status: 0, or 1 when a figure could not be measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import agent_bench, node_bench, operator_bench, report, shared_bench
from bench.common import Entry, cpu_pressure_text, failed_entry
from bench.procs import PY, ChildFailed, Procs

RESULTS = Path(__file__).resolve().parent / "results"
KERNEL_KEYS: dict[str, str] = {
    "kernel_cosine_topk_gbps": "GB/s",
    "kernel_weighted_mean_gbps": "GB/s",
    "kernel_bandwidth_fraction": "GB/s",
    "pool_speedup_2_workers": "calls/s",
    "shm_vs_pickle_100mb": "GB/s",
    "shm_shared_vs_pickle_100mb": "GB/s",
}
KERNELS_CODE = ("import json, sys\nfrom bench import kernels_bench\n"
                "print(json.dumps(kernels_bench.run(sys.argv[1] == 'quick')), flush=True)")


def kernel_figures(quick: bool) -> dict[str, Entry]:
    """bench.kernels_bench.run(quick) in a child process (same venv, same machine)."""
    with Procs() as procs:
        child = procs.start("kernels-bench", [PY, "-c", KERNELS_CODE, "quick" if quick else "full"])
        try:
            return dict(child.read_json(1200))
        except ChildFailed as exc:
            return {k: failed_entry(u, f"kernels_bench failed: {str(exc)[:300]}") for k, u in KERNEL_KEYS.items()}


def node_figures() -> dict[str, Entry]:
    """bench.node_bench in a child process: it picks its own cluster (state dir, ports) before the
    harness is imported, which this process may already have done for the operator figures."""
    with Procs() as procs:
        child = procs.start("node-bench", [PY, "-m", "bench.node_bench", "--json"])
        try:
            figures = dict(child.read_json(1800))
        except ChildFailed as exc:
            return {k: failed_entry(u, f"node_bench failed: {str(exc)[:300]}") for k, u in node_bench.UNITS.items()}
    return {k: {**e, **{f: math.nan for f in ("value", "baseline", "ratio") if e.get(f) is None}}
            for k, e in figures.items()}


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def meta(mode: str, started: float, wall: float, load_before: Sequence[float], psi_before: str) -> dict[str, Any]:
    """Machine and software description for latest-meta.json and the markdown header."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {
        "timestamp": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "wall_seconds": round(wall, 1),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "platform": platform.platform(),
        "git_commit": commit,
        "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
        "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu_pressure_before": psi_before,
        "cpu_pressure_after": cpu_pressure_text(),
        "cpu_pressure_note": "Linux PSI /proc/pressure/cpu 'some' avg10/avg60/avg300: share of time runnable tasks "
                             "waited for a CPU; above a few % other processes were competing with the benchmark",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every Procs context: children are stopped


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short runs (< 3 minutes on 2 cores)")
    mode.add_argument("--full", action="store_true", help="full-length runs (the default)")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX",
                    help="only figures whose key starts with PREFIX (repeatable); writes partial.* files")
    ap.add_argument("--out", type=Path, default=RESULTS, help="output directory (default bench/results)")
    ns = ap.parse_args(argv)
    quick = bool(ns.quick)
    prefixes: list[str] = ns.only

    def want(key: str) -> bool:
        return not prefixes or any(key.startswith(p) for p in prefixes)

    signal.signal(signal.SIGTERM, _sigterm)
    started, t0, load_before, psi_before = time.time(), time.monotonic(), os.getloadavg(), cpu_pressure_text()
    label = "quick" if quick else "full"
    print(f"perfpilot benchmarks ({label}); machine load average {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"CPU pressure {psi_before}", flush=True)
    results: dict[str, Entry] = {}
    try:
        results.update(agent_bench.run(quick, want, log=lambda s: print(s, flush=True)))
        if any(want(k) for k in shared_bench.UNITS):
            t1 = time.monotonic()
            print("  shared_bench (real redis-server, sidecar replicas) ...", flush=True)
            results.update({k: v for k, v in shared_bench.run(quick, want).items() if want(k)})
            print(f"  shared_bench: {time.monotonic() - t1:.1f}s", flush=True)
        if any(want(k) for k in KERNEL_KEYS):
            t1 = time.monotonic()
            print("  kernels_bench ...", flush=True)
            results.update({k: v for k, v in kernel_figures(quick).items() if want(k)})
            print(f"  kernels_bench: {time.monotonic() - t1:.1f}s", flush=True)
        if not quick and any(want(k) for k in operator_bench.UNITS):  # ~3 min: full runs only
            t1 = time.monotonic()
            print("  operator_bench (local control plane, operator, real sidecars) ...", flush=True)
            figures = operator_bench.run(False, log=lambda s: print(f"  {s}", flush=True))
            results.update({k: v for k, v in figures.items() if want(k)})
            print(f"  operator_bench: {time.monotonic() - t1:.1f}s", flush=True)
        if not quick and any(want(k) for k in node_bench.UNITS):  # ~5 min: full runs only
            t1 = time.monotonic()
            print("  node_bench (own cluster with the real node, images, injected pods) ...", flush=True)
            results.update({k: v for k, v in node_figures().items() if want(k)})
            print(f"  node_bench: {time.monotonic() - t1:.1f}s", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped, nothing written", file=sys.stderr)
        return 130
    wall = time.monotonic() - t0
    info = meta(label + (f" (only {', '.join(prefixes)})" if prefixes else ""), started, wall, load_before, psi_before)
    missing = [k for k in report.REQUIRED if want(k) and k not in results]
    for k in missing:
        results[k] = failed_entry(agent_bench.UNITS.get(k) or shared_bench.UNITS.get(k) or KERNEL_KEYS.get(k, "?"),
                                  "no result was produced")
    paths = report.write(results, info, ns.out, stem="partial" if prefixes else "latest")
    print()
    print(report.table(results))
    print()
    print(f"wall time {wall:.1f}s; wrote {', '.join(str(p) for p in paths)}")
    unmeasured = [k for k, e in results.items() if not (isinstance(e["value"], (int, float)) and math.isfinite(e["value"]))]
    if unmeasured:
        print(f"NOT MEASURED: {', '.join(unmeasured)} (see the notes)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
