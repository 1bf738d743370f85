"""numba kernels. THE ONLY MODULE OF PERFPILOT THAT IMPORTS NUMBA (with ``numbacache``, its helper).

It is imported inside pool workers (at warm-up) and by benchmarks/tests that call kernels
in-process; never by ``registry``, ``pool``, ``shm`` or the server.

Environment, set *before* numba is imported (only if the variable is not already set):

* ``NUMBA_CACHE_DIR`` -> ``~/.cache/perfpilot/numba``: compiled kernels are cached outside the
  checkout (``cache=True``), so a restarted sidecar loads machine code instead of recompiling, and
  CI can keep the directory between runs. The sidecar image sets it to kernels compiled at build
  time (``bake``); when the directory is not writable (an unprivileged user, a read-only root
  filesystem) ``numbacache`` serves it read-only: baked entries load, a miss compiles in memory.
* ``NUMBA_NUM_THREADS`` -> the CPUs this process may use (affinity and cgroup quota). That is the
  size of numba's thread pool, an upper bound; pool workers lower the *active* count per call with
  ``numba.set_num_threads(cpus // workers)`` so that workers × threads never oversubscribes.

Every kernel exists in a serial and a parallel (``prange``) variant, two distinct Python functions
(numba's on-disk cache is keyed by function, so one function compiled twice with different flags
would collide). ``fastmath`` is limited to reassociation/contraction flags (``_FM``): it lets LLVM
vectorise reductions, but does not assume away NaN/inf (the heap sentinels use -2.0 anyway).

Kernels take C-contiguous *read-only* arrays (``run_kernel`` makes the view read-only), so one
compiled signature serves pickled arrays, shared-memory views and in-process callers alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .cpus import available_cpus



def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


CACHE_DIR = os.environ.setdefault(
    "NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "perfpilot", "numba"))
CACHE_READ_ONLY = not _writable(CACHE_DIR)
"""True when kernels load from a cache this process cannot write (the image's baked kernels)."""
if CACHE_READ_ONLY:
    os.environ.setdefault("NUMBA_CACHE_LOCATOR_CLASSES", "perfpilot_agent.kernels.numbacache.ReadOnlyCacheLocator")
os.environ.setdefault("NUMBA_NUM_THREADS", str(available_cpus()))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from .errors import UnknownKernel  # noqa: E402

_FM = {"reassoc", "contract", "nsz", "arcp", "afn"}
_SENTINEL = -2.0  # below any cosine score; sorts last


# ---------------------------------------------------------------------------------------------
# helpers


@njit(cache=True, fastmath=_FM, inline="always")
def _worse(s1, i1, s2, i2):  # pragma: no cover - compiled
    # (s1, i1) ranks below (s2, i2): lower score, or equal score and higher index.
    return s1 < s2 or (s1 == s2 and i1 > i2)


@njit(cache=True, fastmath=_FM)
def _heap_replace_root(hs, hi, s, i):  # pragma: no cover - compiled
    """Min-heap on (score asc, index desc): replace the root (the worst) with (s, i) and sift."""
    k = hs.shape[0]
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= k:
            break
        r = c + 1
        if r < k and _worse(hs[r], hi[r], hs[c], hi[c]):
            c = r
        if _worse(hs[c], hi[c], s, i):
            hs[pos] = hs[c]
            hi[pos] = hi[c]
            pos = c
        else:
            break
    hs[pos] = s
    hi[pos] = i


@njit(cache=True, fastmath=_FM)
def _normalise_queries(query):  # pragma: no cover - compiled
    b, d = query.shape
    qn = np.empty((b, d), dtype=np.float32)
    for j in range(b):
        ss = np.float32(0.0)
        for t in range(d):
            ss += query[j, t] * query[j, t]
        inv = np.float32(0.0)
        if ss > 0:
            inv = np.float32(1.0) / np.sqrt(ss)
        for t in range(d):
            qn[j, t] = query[j, t] * inv
    return qn


@njit(cache=True, fastmath=_FM, inline="always")
def _inv_norm(ss):  # pragma: no cover - compiled
    if ss > 0:
        return np.float32(1.0) / np.sqrt(ss)
    return np.float32(0.0)


@njit(cache=True, fastmath=_FM, inline="always")
def _offer(hs, hi, s, i):  # pragma: no cover - compiled
    # rows arrive in ascending order, so an equal score never displaces the root
    if s > hs[0]:
        _heap_replace_root(hs, hi, s, i)


@njit(cache=True, fastmath=_FM)
def _cosine_chunk(qn, matrix, start, stop, hs, hi):  # pragma: no cover - compiled
    """One pass over matrix[start:stop]: row norms, b dot products, bounded-heap insert.

    Rows are processed four at a time: each query element loaded is used for four FMAs and the
    four accumulator chains are independent, which roughly doubles throughput for b >= 4 (the
    kernel is FMA-latency bound there). Row views (``matrix[i]``) index from 0, which lets LLVM
    drop numba's negative-index wraparound and vectorise the inner loops.
    """
    b, d = qn.shape
    i = start
    while i + 4 <= stop:
        r0 = matrix[i]
        r1 = matrix[i + 1]
        r2 = matrix[i + 2]
        r3 = matrix[i + 3]
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for t in range(d):
            s0 += r0[t] * r0[t]
            s1 += r1[t] * r1[t]
            s2 += r2[t] * r2[t]
            s3 += r3[t] * r3[t]
        n0 = _inv_norm(s0)
        n1 = _inv_norm(s1)
        n2 = _inv_norm(s2)
        n3 = _inv_norm(s3)
        for j in range(b):
            q = qn[j]
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for t in range(d):
                qt = q[t]
                a0 += qt * r0[t]
                a1 += qt * r1[t]
                a2 += qt * r2[t]
                a3 += qt * r3[t]
            hsj = hs[j]
            hij = hi[j]
            _offer(hsj, hij, a0 * n0, i)
            _offer(hsj, hij, a1 * n1, i + 1)
            _offer(hsj, hij, a2 * n2, i + 2)
            _offer(hsj, hij, a3 * n3, i + 3)
        i += 4
    while i < stop:
        row = matrix[i]
        ss = np.float32(0.0)
        for t in range(d):
            ss += row[t] * row[t]
        inv = _inv_norm(ss)
        for j in range(b):
            q = qn[j]
            acc = np.float32(0.0)
            for t in range(d):
                acc += q[t] * row[t]
            _offer(hs[j], hi[j], acc * inv, i)
        i += 1


@njit(cache=True)
def _merge_heaps(hs, hi, k):  # pragma: no cover - compiled
    """hs/hi[c, b, k] chunk heaps -> (indices[b,k], scores[b,k]) by score desc, index asc."""
    nc, b, _ = hs.shape
    out_i = np.empty((b, k), dtype=np.int64)
    out_s = np.empty((b, k), dtype=np.float32)
    m = nc * k
    cs = np.empty(m, dtype=np.float32)
    ci = np.empty(m, dtype=np.int64)
    for j in range(b):
        p = 0
        for c in range(nc):
            for t in range(k):
                cs[p] = hs[c, j, t]
                ci[p] = hi[c, j, t]
                p += 1
        o1 = np.argsort(ci)
        cs2 = cs[o1]
        ci2 = ci[o1]
        o2 = np.argsort(-cs2, kind="mergesort")  # stable: equal scores keep index order
        for t in range(k):
            out_i[j, t] = ci2[o2[t]]
            out_s[j, t] = cs2[o2[t]]
    return out_i, out_s


@njit(cache=True)
def _n_chunks(n, threads):  # pragma: no cover - compiled
    c = threads * 4
    if c > n:
        c = n
    if c < 1:
        c = 1
    return c


# ---------------------------------------------------------------------------------------------
# cosine_topk


@njit(cache=True, fastmath=_FM)
def cosine_topk_serial(query, matrix, k):  # pragma: no cover - compiled
    b = query.shape[0]
    n = matrix.shape[0]
    qn = _normalise_queries(query)
    hs = np.full((1, b, k), _SENTINEL, dtype=np.float32)
    hi = np.full((1, b, k), n, dtype=np.int64)
    _cosine_chunk(qn, matrix, 0, n, hs[0], hi[0])
    return _merge_heaps(hs, hi, k)


@njit(cache=True, parallel=True, fastmath=_FM)
def cosine_topk_parallel(query, matrix, k, threads):  # pragma: no cover - compiled
    b = query.shape[0]
    n = matrix.shape[0]
    qn = _normalise_queries(query)
    nc = _n_chunks(n, threads)
    step = (n + nc - 1) // nc
    hs = np.full((nc, b, k), _SENTINEL, dtype=np.float32)
    hi = np.full((nc, b, k), n, dtype=np.int64)
    for c in prange(nc):
        lo = c * step
        hi_row = min(n, lo + step)
        _cosine_chunk(qn, matrix, lo, hi_row, hs[c], hi[c])
    return _merge_heaps(hs, hi, k)


# ---------------------------------------------------------------------------------------------
# weighted_mean


@njit(cache=True, fastmath=_FM)
def _wmean_chunk(values, weights, start, stop, acc):  # pragma: no cover - compiled
    d = values.shape[1]
    for i in range(start, stop):
        w = weights[i]
        if w != 0.0:
            for t in range(d):
                acc[t] += w * values[i, t]


@njit(cache=True, fastmath=_FM)
def weighted_mean_serial(values, weights):  # pragma: no cover - compiled
    n, d = values.shape
    acc = np.zeros(d, dtype=np.float64)
    _wmean_chunk(values, weights, 0, n, acc)
    total = 0.0
    for i in range(n):
        total += weights[i]
    return acc / total


@njit(cache=True, parallel=True, fastmath=_FM)
def weighted_mean_parallel(values, weights, threads):  # pragma: no cover - compiled
    n, d = values.shape
    nc = _n_chunks(n, threads)
    step = (n + nc - 1) // nc
    part = np.zeros((nc, d), dtype=np.float64)
    for c in prange(nc):
        lo = c * step
        _wmean_chunk(values, weights, lo, min(n, lo + step), part[c])
    acc = np.zeros(d, dtype=np.float64)
    for c in range(nc):
        for t in range(d):
            acc[t] += part[c, t]
    total = 0.0
    for i in range(n):
        total += weights[i]
    return acc / total


# ---------------------------------------------------------------------------------------------
# normalize_score


@njit(cache=True, fastmath=_FM)
def _score_rows(matrix, qn, start, stop, out):  # pragma: no cover - compiled
    d = matrix.shape[1]
    for i in range(start, stop):
        ss = matrix[i, 0] * 0
        dot = matrix[i, 0] * 0
        for t in range(d):
            v = matrix[i, t]
            ss += v * v
            dot += v * qn[t]
        if ss > 0:
            out[i] = dot / np.sqrt(ss)
        else:
            out[i] = 0


@njit(cache=True, fastmath=_FM)
def _unit(query):  # pragma: no cover - compiled
    ss = query[0] * 0
    for t in range(query.shape[0]):
        ss += query[t] * query[t]
    qn = np.zeros_like(query)
    if ss > 0:
        inv = 1 / np.sqrt(ss)
        for t in range(query.shape[0]):
            qn[t] = query[t] * inv
    return qn


@njit(cache=True, fastmath=_FM)
def normalize_score_serial(matrix, query):  # pragma: no cover - compiled
    n = matrix.shape[0]
    out = np.empty(n, dtype=matrix.dtype)
    _score_rows(matrix, _unit(query), 0, n, out)
    return out


@njit(cache=True, parallel=True, fastmath=_FM)
def normalize_score_parallel(matrix, query, threads):  # pragma: no cover - compiled
    n = matrix.shape[0]
    out = np.empty(n, dtype=matrix.dtype)
    qn = _unit(query)
    nc = _n_chunks(n, threads)
    step = (n + nc - 1) // nc
    for c in prange(nc):
        lo = c * step
        _score_rows(matrix, qn, lo, min(n, lo + step), out)
    return out


# ---------------------------------------------------------------------------------------------
# read-bandwidth probe (the roofline for the benchmarks)


@njit(cache=True, fastmath=_FM)
def _sum_all(x):  # pragma: no cover - compiled
    # the loop runs from 0 over a view: no wraparound check, so LLVM vectorises it
    s0 = np.float32(0.0)
    for i in range(x.shape[0]):
        s0 += x[i]
    return s0


@njit(cache=True, fastmath=_FM)
def probe_sum_serial(x):  # pragma: no cover - compiled
    return _sum_all(x)


@njit(cache=True, parallel=True, fastmath=_FM)
def probe_sum_parallel(x, threads):  # pragma: no cover - compiled
    # numba's own prange reduction: each thread gets a contiguous block and a private
    # accumulator that LLVM vectorises (a hand-chunked loop measured slower).
    s = np.float32(0.0)
    for i in prange(x.shape[0]):
        s += x[i]
    return s


def probe_sum(x: np.ndarray, *, parallel: bool = True) -> float:
    """Sum of a float32 array, reading every byte once: the memory-read roofline probe."""
    flat = _ro(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    if parallel:
        return float(probe_sum_parallel(flat, numba.get_num_threads()))
    return float(probe_sum_serial(flat))


# ---------------------------------------------------------------------------------------------
# dispatch


_FUNCS: dict[str, tuple[Any, Any]] = {
    "cosine_topk": (cosine_topk_serial, cosine_topk_parallel),
    "normalize_score": (normalize_score_serial, normalize_score_parallel),
    "weighted_mean": (weighted_mean_serial, weighted_mean_parallel),
}


def _ro(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def set_threads(n: int) -> int:
    """Set numba's active thread count (clamped to 1..NUMBA_NUM_THREADS); returns it."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # set at import
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def run_kernel(
    name: str,
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, Any],
    *,
    parallel: bool = True,
) -> dict[str, np.ndarray]:
    """Run one kernel on already validated and coerced inputs (see registry.coerce_inputs)."""
    try:
        serial_fn, parallel_fn = _FUNCS[name]
    except KeyError:
        from .registry import known

        raise UnknownKernel(f"unknown kernel {name!r}; known: {known()}") from None
    # The thread count is an argument (calling numba.get_num_threads() inside a parallel
    # function makes it uncacheable: "dynamic globals").
    extra: tuple[int, ...] = (numba.get_num_threads(),) if parallel else ()
    fn = parallel_fn if parallel else serial_fn
    if name == "cosine_topk":
        idx, scores = fn(_ro(inputs["query"]), _ro(inputs["matrix"]), int(params["k"]), *extra)
        return {"indices": idx, "scores": scores}
    if name == "normalize_score":
        return {"scores": fn(_ro(inputs["matrix"]), _ro(inputs["query"]), *extra)}
    return {"mean": fn(_ro(inputs["values"]), _ro(inputs["weights"]), *extra)}


def _dummies(name: str) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    f32, f64 = np.float32, np.float64
    if name == "cosine_topk":
        return [({"query": np.ones((2, 4), f32), "matrix": np.ones((8, 4), f32)}, {"k": 3})]
    if name == "normalize_score":
        return [({"matrix": np.ones((8, 4), dt), "query": np.ones(4, dt)}, {}) for dt in (f32, f64)]
    if name == "weighted_mean":
        return [({"values": np.ones((8, 4), dt), "weights": np.ones(8, f64)}, {}) for dt in (f32, f64)]
    return []


def warm(names: Iterable[str], *, variants: Iterable[bool] = (False, True)) -> dict[str, float]:
    """Compile (or load from the on-disk cache) the given kernels for every supported dtype.

    ``variants`` lists the ``parallel`` flags to warm. Returns seconds spent per kernel.
    """
    out: dict[str, float] = {}
    variants = tuple(variants)
    for name in names:
        if name not in _FUNCS:
            from .registry import known

            raise UnknownKernel(f"unknown kernel {name!r}; known: {known()}")
        t0 = time.perf_counter()
        for inputs, params in _dummies(name):
            for par in variants:
                run_kernel(name, inputs, params, parallel=par)
        out[name] = time.perf_counter() - t0
    return out


def warm_probe(*, variants: Iterable[bool] = (False, True)) -> None:
    for par in variants:
        probe_sum(np.ones(16, np.float32), parallel=par)


if CACHE_READ_ONLY:
    from . import numbacache  # noqa: E402

    numbacache.tolerate_misses(list(globals().values()))
