"""Kernel subsystem benchmarks: numba kernels vs NumPy, vs the memory-read roofline, and the pool.

``run(quick)`` returns ``{key: {"value", "unit", "baseline", "ratio", "note"}}`` where ``ratio`` is
always ``value / baseline`` and the baseline is measured in the same run:

* kernel_cosine_topk_gbps   fused numba cosine top-k (parallel) vs registry.reference_numpy
                            (BLAS matmul + norms + partition), bytes of input read per second.
* kernel_weighted_mean_gbps same for weighted_mean (NumPy: np.average).
* kernel_bandwidth_fraction cosine top-k GB/s over the parallel read probe (jit.probe_sum) on an
                            array of the same size: how close to memory-bound the kernel is.
* pool_speedup_2_workers    calls/s of a batch of CPU-bound calls (serial kernels) through a
                            2-worker pool vs the same pool resized to 1 worker.
* shm_vs_pickle_100mb       a 100 MB array delivered to a worker (every page touched there) via
                            shared memory (the default path of ``run`` for a plain ndarray: one
                            copy into a segment) vs via pickling through the pipe; GB/s.
* shm_shared_vs_pickle_100mb the same array allocated with ``pool.shared_array`` (no copy at all).

Medians of interleaved repeats after warm-up (interleaving spreads machine noise over both
sides of each ratio). Everything runs in this process or its pool.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from perfpilot_agent.kernels import KernelPool, registry

GB = 1e9


# How each contender is timed. Interleaving single calls (kernel, NumPy, kernel, ...) measured the
# contenders' interference rather than the contenders: NumPy's OpenBLAS threads keep spinning for a
# while after a BLAS call (THREAD_TIMEOUT, ~0.1 s) and numba's OpenMP threads then share the two
# cores with them, so a kernel timed right after np.dot/np.average ran at half speed (12-15 instead
# of 25 GB/s here); and long idle gaps let this VM reclaim NumPy's freed pages (200 ms outliers).
# So each contender runs in blocks: a pause for spinning threads to park, one untimed call, then
# back-to-back timed calls; blocks alternate over two rounds. A sidecar worker never runs BLAS.
# The figure is the best block-call (capability, as timeit reports); medians go into the notes.
_QUIET_S = 0.15
_ROUNDS = 2


def _timings(funcs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per contender."""
    times: dict[str, list[float]] = {k: [] for k in funcs}
    per_block = max(2, (repeats + _ROUNDS - 1) // _ROUNDS)
    for _ in range(_ROUNDS):
        for k, f in funcs.items():
            time.sleep(_QUIET_S)
            f()  # untimed: compilation on first use, page faults, threads waking up
            for _ in range(per_block):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def _entry(value: float, unit: str, baseline: float, note: str) -> dict[str, Any]:
    return {
        "value": round(value, 4),
        "unit": unit,
        "baseline": round(baseline, 4),
        "ratio": round(value / baseline, 4) if baseline else float("nan"),
        "note": note,
    }


def bench_kernels(quick: bool) -> dict[str, dict[str, Any]]:
    from perfpilot_agent.kernels import jit

    jit.warm(["cosine_topk", "weighted_mean"])
    jit.warm_probe()
    threads = jit.set_threads(10**6)  # all CPUs this process may use
    n = 50_000 if quick else 200_000
    d, b, k = 384, 8, 10
    repeats = 5 if quick else 9
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal((b, d), dtype=np.float32)
    weights = rng.random(n)
    cos_in = {"query": query, "matrix": matrix}
    wm_in: dict[str, np.ndarray] = {"values": matrix, "weights": weights}
    flat = matrix.reshape(-1)

    tm = _timings(
        {
            "cos_jit": lambda: jit.run_kernel("cosine_topk", cos_in, {"k": k}, parallel=True),
            "cos_np": lambda: registry.reference_numpy("cosine_topk", cos_in, {"k": k}),
            "wm_jit": lambda: jit.run_kernel("weighted_mean", wm_in, {}, parallel=True),
            "wm_np": lambda: registry.reference_numpy("weighted_mean", wm_in, {}),
            "probe": lambda: jit.probe_sum(flat, parallel=True),
        },
        repeats,
    )
    # b=1 (a single query): the regime where the fused kernel is purely memory-bound
    q1 = {"query": query[:1], "matrix": matrix}
    tm1 = _timings(
        {
            "cos1_jit": lambda: jit.run_kernel("cosine_topk", q1, {"k": k}, parallel=True),
            "cos1_np": lambda: registry.reference_numpy("cosine_topk", q1, {"k": k}),
            "probe": lambda: jit.probe_sum(flat, parallel=True),
        },
        repeats,
    )
    t = {k: v[0] for k, v in tm.items()}
    t1 = {k: v[0] for k, v in tm1.items()}
    med = {k: v[1] for k, v in tm.items()}
    cos_bytes = matrix.nbytes + query.nbytes
    wm_bytes = matrix.nbytes + weights.nbytes
    cos_gbps = cos_bytes / t["cos_jit"] / GB
    cos_np_gbps = cos_bytes / t["cos_np"] / GB
    probe_gbps = matrix.nbytes / t["probe"] / GB
    cos1_gbps = (matrix.nbytes + query[:1].nbytes) / t1["cos1_jit"] / GB
    cos1_np_gbps = (matrix.nbytes + query[:1].nbytes) / t1["cos1_np"] / GB
    probe1_gbps = matrix.nbytes / t1["probe"] / GB
    size = f"matrix {n}x{d} float32 ({matrix.nbytes / 1e6:.0f} MB), {threads} threads"
    return {
        "kernel_cosine_topk_gbps": _entry(
            cos_gbps,
            "GB/s",
            cos_np_gbps,
            f"fused numba cosine top-k, b={b} queries, k={k}, {size}; baseline: NumPy "
            f"(norms + BLAS matmul + partition). With b=1: {cos1_gbps:.1f} vs NumPy {cos1_np_gbps:.1f} GB/s "
            f"= {cos1_gbps / cos1_np_gbps:.1f}x. Best call of {_ROUNDS} alternating blocks per contender; "
            f"medians: {cos_bytes / med['cos_jit'] / GB:.1f} vs {cos_bytes / med['cos_np'] / GB:.1f} GB/s. "
            f"Target >= 4x NumPy.",
        ),
        "kernel_weighted_mean_gbps": _entry(
            wm_wbps := wm_bytes / t["wm_jit"] / GB,
            "GB/s",
            wm_bytes / t["wm_np"] / GB,
            f"numba weighted mean (float64 accumulation), {size}; baseline: np.average(axis=0, weights=w) "
            f"(converts the matrix to float64 first). Medians: {wm_bytes / med['wm_jit'] / GB:.1f} vs "
            f"{wm_bytes / med['wm_np'] / GB:.1f} GB/s.",
        ),
        "kernel_bandwidth_fraction": _entry(
            cos_gbps,
            "GB/s",
            probe_gbps,
            f"cosine top-k (b={b}) read rate over the parallel numba read probe (sum) on the same "
            f"{matrix.nbytes / 1e6:.0f} MB; with b=1: {cos1_gbps:.1f} / {probe1_gbps:.1f} GB/s = "
            f"{cos1_gbps / probe1_gbps:.2f}. b={b} does {b} dot products per row: FMA-latency bound, not "
            f"memory-bound, on {threads} cores. Medians: {cos_bytes / med['cos_jit'] / GB:.1f} / "
            f"{matrix.nbytes / med['probe'] / GB:.1f} GB/s. weighted_mean reaches {wm_wbps / probe_gbps:.2f} of the probe. "
            f"Target >= 0.70.",
        ),
    }


async def _pool_speedup(quick: bool) -> dict[str, Any]:
    calls = 16 if quick else 32
    rng = np.random.default_rng(1)
    pool = KernelPool(workers=2, parallel=False)  # serial kernels: measures the pool, not numba threads
    await pool.start(warm=["cosine_topk"])
    try:
        matrix = pool.shared_array((20_000, 384), np.float32)  # shared: transport is not measured
        matrix[...] = rng.standard_normal(matrix.shape, dtype=np.float32)
        query = rng.standard_normal((32, 384), dtype=np.float32)  # 32 dot products per row: CPU-bound
        inputs = {"query": query, "matrix": matrix}

        async def batch() -> float:
            t0 = time.perf_counter()
            await asyncio.gather(*(pool.run("cosine_topk", inputs, {"k": 10}) for _ in range(calls)))
            return calls / (time.perf_counter() - t0)

        rates: dict[int, list[float]] = {1: [], 2: []}
        await batch()
        for _ in range(3 if quick else 5):
            for w in (2, 1):
                await pool.resize(w)
                rates[w].append(await batch())
        r2, r1 = statistics.median(rates[2]), statistics.median(rates[1])
    finally:
        await pool.close()
    return _entry(
        r2,
        "calls/s",
        r1,
        f"batch of {calls} cosine_topk calls (32x384 queries vs 20000x384 shared matrix, serial kernels) "
        f"through a 2-worker pool vs the same pool resized live to 1 worker. Target >= 1.8x on 2 cores.",
    )


async def _transport(quick: bool) -> dict[str, dict[str, Any]]:
    repeats = 5 if quick else 9
    pool = KernelPool(workers=1, parallel=False)
    await pool.start(warm=[])
    try:
        nbytes = 100 * 1024 * 1024
        arr = np.random.default_rng(2).random(nbytes // 4, dtype=np.float32)
        shared = pool.shared_array(arr.shape, np.float32)
        shared[...] = arr

        async def once(a: np.ndarray, via: str) -> float:
            t0 = time.perf_counter()
            res = await pool._submit_probe({"x": a}, via)
            assert res["nbytes"] == nbytes
            return time.perf_counter() - t0

        # Blocks per contender, as in bench_kernels: single calls interleaved measured their
        # interference (a shared-array call right after a 105 MB pickle took 8 ms instead of
        # 0.5 ms: the worker had just allocated and freed 105 MB).
        contenders = {"shm": (arr, "shm"), "pickle": (arr, "pickle"), "shared": (shared, "shm")}
        times: dict[str, list[float]] = {k: [] for k in contenders}
        per_block = max(2, (repeats + _ROUNDS - 1) // _ROUNDS)
        for _ in range(_ROUNDS):
            for key, (a, via) in contenders.items():
                await asyncio.sleep(_QUIET_S)
                await once(a, via)  # untimed: first mapping, worker allocations
                for _ in range(per_block):
                    times[key].append(await once(a, via))
        med = {k: statistics.median(v) for k, v in times.items()}
        copy_s = []  # what the copy alone costs: the floor of the per-call shared-memory path
        for _ in range(3):
            t0 = time.perf_counter()
            shared[...] = arr
            copy_s.append(time.perf_counter() - t0)
        copy_ms = statistics.median(copy_s) * 1e3
    finally:
        await pool.close()
    mb = nbytes / 1e6
    pickle_gbps = nbytes / med["pickle"] / GB
    return {
        "shm_vs_pickle_100mb": _entry(
            nbytes / med["shm"] / GB,
            "GB/s",
            pickle_gbps,
            f"{mb:.0f} MB ndarray delivered to a worker which touches every page: copied into a shared "
            f"segment per call ({med['shm'] * 1e3:.1f} ms) vs pickled through the pipe "
            f"({med['pickle'] * 1e3:.1f} ms); medians of {_ROUNDS} alternating blocks per contender. "
            f"The copy alone (one memcpy of {mb:.0f} MB into an already mapped segment) takes "
            f"{copy_ms:.1f} ms here, so a per-call copy cannot beat pickle by more than "
            f"{med['pickle'] * 1e3 / copy_ms:.0f}x; arrays allocated with pool.shared_array skip it "
            f"(next key). Target >= 50x.",
        ),
        "shm_shared_vs_pickle_100mb": _entry(
            nbytes / med["shared"] / GB,
            "GB/s",
            pickle_gbps,
            f"same, array allocated with pool.shared_array (zero-copy, only the descriptor travels and "
            f"the worker maps it): {med['shared'] * 1e3:.2f} ms per call vs pickle {med['pickle'] * 1e3:.1f} ms.",
        ),
    }


def run(quick: bool) -> dict[str, dict[str, Any]]:
    out = bench_kernels(quick)

    async def pool_parts() -> dict[str, dict[str, Any]]:
        res = {"pool_speedup_2_workers": await _pool_speedup(quick)}
        res.update(await _transport(quick))
        return res

    out.update(asyncio.run(pool_parts()))
    return out


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'benchmark':30} {'value':>12} {'baseline':>12} {'ratio':>9}  unit")
    for key, e in results.items():
        print(f"{key:30} {e['value']:12.3f} {e['baseline']:12.3f} {e['ratio']:9.2f}  {e['unit']}")
    print()
    for key, e in results.items():
        print(f"- {key}: {e['note']}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    _print_table(run(quick=ap.parse_args().quick))
