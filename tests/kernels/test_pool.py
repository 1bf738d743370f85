"""KernelPool behaviour: correctness through the pool, transports, backpressure, resize, death, close.

No sleeps are used to synchronise: tests wait on futures, on ``pool.settle()``, or yield to the
event loop (``asyncio.sleep(0)``) until a condition the loop itself makes true.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import signal
import sys

import numpy as np
import psutil
import pytest
import pytest_asyncio

from perfpilot_agent.kernels import KernelPool, shm
from perfpilot_agent.kernels.errors import (
    KernelInputError,
    PoolClosed,
    PoolSaturated,
    StagingFailed,
    UnknownKernel,
    WorkerDied,
)

from .helpers import assert_close

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALL = ("cosine_topk", "normalize_score", "weighted_mean")


def cases(rng: np.random.Generator, n: int = 3000, d: int = 32):
    m = rng.standard_normal((n, d)).astype(np.float32)
    return [
        ("cosine_topk", {"query": rng.standard_normal((4, d)).astype(np.float32), "matrix": m}, {"k": 7}),
        ("normalize_score", {"matrix": m, "query": rng.standard_normal(d).astype(np.float32)}, {}),
        ("normalize_score", {"matrix": m.astype(np.float64), "query": rng.standard_normal(d)}, {}),
        ("weighted_mean", {"values": m, "weights": rng.random(n)}, {}),
        ("weighted_mean", {"values": m.astype(np.float64), "weights": rng.random(n)}, {}),
    ]


def own_children() -> set[int]:
    """Child processes of this test process, except multiprocessing's shared resource tracker."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.Error:
            continue
        out.add(p.pid)
    return out


def leaked(p: KernelPool) -> list[str]:
    """Segments of this pool in /dev/shm that are neither recycled spares nor shared arrays."""
    spare = {seg.name for seg in p.staging.spare}
    return [n for n in shm.list_segments(p.staging.prefix) if n not in spare and "_sh" not in n[len(p.staging.prefix) - 1 :]]


async def until(cond) -> None:
    """Yield to the event loop until ``cond()`` holds (bounded by pytest-timeout)."""
    while not cond():
        await asyncio.sleep(0)


def slow_call(rng: np.random.Generator) -> tuple[str, dict, dict]:
    """A call that keeps a worker busy for a good while (a large serial cosine top-k)."""
    matrix = rng.standard_normal((400_000, 128)).astype(np.float32)  # 200 MB
    query = rng.standard_normal((64, 128)).astype(np.float32)
    return "cosine_topk", {"query": query, "matrix": matrix}, {"k": 5}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    events: list[tuple[str, dict]] = []
    p = KernelPool(workers=2, shm_threshold_bytes=1 << 20, on_event=lambda k, d: events.append((k, d)))
    p.events = events  # type: ignore[attr-defined]
    await p.start(warm=ALL)
    yield p
    await p.close()


async def test_start_warms_and_reports_stats(pool):
    st = pool.stats()
    assert st.workers == 2 and st.warm == ALL and st.max_queue == 1000
    assert len(pool.worker_pids()) == 2 and all(psutil.pid_exists(p) for p in pool.worker_pids())


@pytest.mark.parametrize("threshold", [1 << 30, 0], ids=["pickled", "shm"])
async def test_results_equal_numpy_through_both_transports(pool, rng, threshold, monkeypatch):
    read_back: list[str] = []
    original = shm.Segment.read

    def spy(self, shape, dtype):  # outputs copied out of the segment with pread, never a mapping
        read_back.append(self.name)
        return original(self, shape, dtype)

    monkeypatch.setattr(shm.Segment, "read", spy)
    pool.shm_threshold_bytes = threshold
    try:
        for name, inputs, params in cases(rng):
            read_back.clear()
            got = await pool.run(name, inputs, params)
            assert_close(name, got, inputs, params)
            assert len(read_back) == (len(got) if threshold == 0 else 0)
            assert not any(isinstance(v.base, mmap.mmap) for v in got.values())
    finally:
        pool.shm_threshold_bytes = 1 << 20
    assert leaked(pool) == []  # every call released its segments (spares are reused, bounded)
    assert sum(seg.size for seg in pool.staging.spare) <= pool.staging.spare_segment_bytes


async def test_shared_array_is_sent_without_copy(pool, rng):
    src = rng.standard_normal((5000, 16)).astype(np.float32)
    arr = pool.shared_array(src.shape, np.float32)
    arr[...] = src
    weights = rng.random(5000)
    got = await pool.run("weighted_mean", {"values": arr, "weights": weights}, {})
    assert_close("weighted_mean", got, {"values": src, "weights": weights}, {})
    got = await pool.run("weighted_mean", {"values": arr[100:200], "weights": weights[:100]}, {})
    assert_close("weighted_mean", got, {"values": src[100:200], "weights": weights[:100]}, {})
    name = pool.staging.shared.ref_for(arr).name
    assert name in shm.list_segments()

    def mapped_in_workers() -> bool:
        return any(name in open(f"/proc/{pid}/maps").read() for pid in pool.worker_pids())

    assert mapped_in_workers()  # workers cache the mapping of long-lived arrays between calls
    pool.free_shared(arr)
    assert name not in shm.list_segments()
    # the next call to each worker tells it to drop the mapping, releasing the memory
    await asyncio.gather(*(pool.run("weighted_mean", {"values": src[:10], "weights": weights[:10]}, {}) for _ in range(8)))
    assert not mapped_in_workers()


async def test_recycled_input_segments_stay_mapped_until_freed(pool, rng):
    """Copies of large inline inputs go to recycled segments whose mapping the worker keeps; a
    segment dropped from the spares is unmapped by the workers' next calls (no leak)."""
    pool.shm_threshold_bytes = 0
    old_spare = pool.staging.spare_segment_bytes
    try:
        a = rng.standard_normal((4000, 16)).astype(np.float32)
        w = rng.random(4000)
        for scale in (1.0, 2.0):  # the same recycled segment carries each call's own data
            got = await pool.run("weighted_mean", {"values": a * scale, "weights": w}, {})
            assert_close("weighted_mean", got, {"values": a * scale, "weights": w}, {})
        names = [seg.name for seg in pool.staging.spare]
        assert names

        def mapped() -> set[str]:
            maps = "".join(open(f"/proc/{pid}/maps").read() for pid in pool.worker_pids())
            return {n for n in names if n in maps}

        assert mapped()  # kept between calls
        pool.staging.spare_segment_bytes = 0  # the next release frees every spare segment
        small = {"values": a[:10], "weights": w[:10]}
        await asyncio.gather(*(pool.run("weighted_mean", small, {}) for _ in range(8)))
        await asyncio.gather(*(pool.run("weighted_mean", small, {}) for _ in range(8)))
        assert not set(names) & set(shm.list_segments())
        assert not mapped()
    finally:
        pool.shm_threshold_bytes = 1 << 20
        pool.staging.spare_segment_bytes = old_spare
    assert leaked(pool) == []


async def test_concurrent_calls_all_correct(pool, rng):
    cs = cases(rng, n=500) * 8
    results = await asyncio.gather(*(pool.run(n, i, p) for n, i, p in cs))
    for (name, inputs, params), got in zip(cs, results):
        assert_close(name, got, inputs, params)
    assert pool.stats().queue_depth == 0 and pool.stats().busy == 0


async def test_bad_input_is_rejected_before_queueing(pool):
    before = pool.stats().completed + pool.stats().failed
    with pytest.raises(KernelInputError, match="matrix: expected 2-D float32 array, got shape"):
        pool.submit("cosine_topk", {"query": np.ones((1, 3), np.float32), "matrix": np.ones(3, np.float32)}, {"k": 1})
    with pytest.raises(UnknownKernel, match="known: cosine_topk, normalize_score, weighted_mean"):
        await pool.run("foo", {}, {})
    assert pool.stats().completed + pool.stats().failed == before


async def test_nan_is_reported_by_the_worker_as_input_error(pool):
    m = np.ones((10, 3), np.float32)
    m[4, 1] = np.nan
    with pytest.raises(KernelInputError, match="matrix: contains NaN"):
        await pool.run("normalize_score", {"matrix": m, "query": np.ones(3, np.float32)}, {})
    w = np.zeros(10)
    with pytest.raises(KernelInputError, match="weights: sum must be positive"):
        await pool.run("weighted_mean", {"values": np.ones((10, 3)), "weights": w}, {})
    # the worker is still serving
    got = await pool.run("weighted_mean", {"values": np.ones((10, 3)), "weights": np.ones(10)}, {})
    np.testing.assert_allclose(got["mean"], [1, 1, 1])


async def test_cancelled_caller_does_not_break_the_pool(pool, rng):
    name, inputs, params = cases(rng)[0]
    fut = pool.submit(name, inputs, params)
    fut.cancel()
    got = await pool.run(name, inputs, params)
    assert_close(name, got, inputs, params)
    await until(lambda: pool.stats().busy == 0)
    assert leaked(pool) == []


async def test_full_shared_memory_fails_the_call_not_the_worker(pool, rng, monkeypatch):
    """/dev/shm full (the pool's pwrite of an input copy gets ENOSPC, docs/kernels.md "Sizing
    /dev/shm") fails that call with StagingFailed; the healthy worker is neither killed nor
    replaced, no worker_died event is emitted, and the next call is served."""
    pids, restarts, seen = sorted(pool.worker_pids()), pool.stats().restarts, len(pool.events)

    def full(self, arr):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    inputs = {"values": rng.standard_normal((400, 8)), "weights": rng.random(400)}
    pool.shm_threshold_bytes = 0
    try:
        with monkeypatch.context() as m:
            m.setattr(shm.Segment, "write", full)
            for _ in range(3):
                with pytest.raises(StagingFailed, match=r"weighted_mean: .*No space left on device"):
                    await pool.run("weighted_mean", inputs, {})
        assert_close("weighted_mean", await pool.run("weighted_mean", inputs, {}), inputs, {})
    finally:
        pool.shm_threshold_bytes = 1 << 20
    await pool.settle()
    assert sorted(pool.worker_pids()) == pids and pool.stats().restarts == restarts
    assert [k for k, _ in pool.events[seen:]] == []
    assert leaked(pool) == []


async def test_resize_under_load_loses_no_call(pool, rng):
    cs = cases(rng, n=20_000) * 6
    futs = [pool.submit(n, i, p) for n, i, p in cs]
    await pool.resize(1)
    assert pool.stats().workers == 1 and len(pool.worker_pids()) == 1
    more = [pool.submit(n, i, p) for n, i, p in cs[:10]]
    await pool.resize(3)
    assert pool.stats().workers == 3 and len(pool.worker_pids()) == 3
    results = await asyncio.gather(*futs, *more)
    for (name, inputs, params), got in zip(cs + cs[:10], results):
        assert_close(name, got, inputs, params)
    await pool.resize(2)
    assert pool.stats().workers == 2
    kinds = [k for k, _ in pool.events]
    assert kinds.count("pool_resized") >= 3
    assert ("pool_resized", {"old": 2, "new": 1}) in pool.events


async def test_backpressure_full_queue_fails_at_once(rng):
    events: list[tuple[str, dict]] = []
    p = KernelPool(workers=1, max_queue=1, parallel=False, on_event=lambda k, d: events.append((k, d)))
    await p.start(warm=["cosine_topk"])
    try:
        name, inputs, params = slow_call(rng)
        first = p.submit(name, inputs, params)
        small = {"query": np.ones((1, 4), np.float32), "matrix": np.ones((5, 4), np.float32)}
        with pytest.raises(PoolSaturated, match="max_queue=1"):
            p.submit("cosine_topk", small, {"k": 1})
        with pytest.raises(PoolSaturated):
            await p.run("cosine_topk", small, {"k": 1})
        assert events and events[-1][0] == "overload"
        p.set_max_queue(2)  # live change: one more call fits now
        second = p.submit("cosine_topk", small, {"k": 1})
        with pytest.raises(PoolSaturated, match="max_queue=2"):
            p.submit("cosine_topk", small, {"k": 1})
        assert p.stats().queue_depth + p.stats().busy == 2
        r1, r2 = await asyncio.gather(first, second)
        assert r1["indices"].shape == (64, 5) and r2["indices"].tolist() == [[0]]
        await p.run("cosine_topk", small, {"k": 1})  # room again
    finally:
        await p.close()


async def test_killed_worker_fails_its_call_and_is_replaced(rng):
    events: list[tuple[str, dict]] = []
    p = KernelPool(workers=1, parallel=False, on_event=lambda k, d: events.append((k, d)))
    await p.start(warm=["cosine_topk", "weighted_mean"])
    try:
        (victim,) = p.worker_pids()
        name, inputs, params = slow_call(rng)
        doomed = p.submit(name, inputs, params)
        queued = p.submit("weighted_mean", {"values": np.ones((4, 2)), "weights": np.ones(4)}, {})
        await until(lambda: p.stats().busy == 1)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerDied, match=rf"pid {victim} died \(killed by signal SIGKILL\)"):
            await doomed
        # the queued call was not lost: it runs on the replacement
        np.testing.assert_allclose((await queued)["mean"], [1, 1])
        await p.settle()
        st = p.stats()
        assert st.restarts == 1 and st.failed == 1 and st.workers == 1
        assert len(p.worker_pids()) == 1 and victim not in p.worker_pids()
        assert any(k == "worker_died" and d["pid"] == victim for k, d in events)
        got = await p.run("cosine_topk", {"query": inputs["query"][:2], "matrix": inputs["matrix"][:1000]}, {"k": 3})
        assert_close("cosine_topk", got, {"query": inputs["query"][:2], "matrix": inputs["matrix"][:1000]}, {"k": 3})
        assert leaked(p) == []  # the dead call's input segment was released
    finally:
        await p.close()


async def test_idle_worker_death_is_detected_and_replaced():
    p = KernelPool(workers=2, parallel=False)
    await p.start(warm=["weighted_mean"])
    try:
        victim = p.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: p.stats().restarts == 1)
        await p.settle()
        assert len(p.worker_pids()) == 2 and victim not in p.worker_pids()
        got = await asyncio.gather(*(p.run("weighted_mean", {"values": np.ones((4, 2)), "weights": np.ones(4)}, {}) for _ in range(4)))
        assert all(np.allclose(g["mean"], 1) for g in got)
    finally:
        await p.close()


async def test_close_leaves_no_children_and_no_segments(rng):
    before = own_children()
    p = KernelPool(workers=2, shm_threshold_bytes=0)
    await p.start(warm=["weighted_mean"])
    pids = set(p.worker_pids())
    assert pids <= own_children()
    keep = p.shared_array((1000, 8), np.float64)
    keep[...] = 1
    # one call running, more queued when close() starts
    futs = [p.submit("weighted_mean", {"values": keep, "weights": np.ones(1000)}, {}) for _ in range(6)]
    await until(lambda: p.stats().busy >= 1)
    await p.close()
    assert own_children() == before
    assert shm.list_segments(p.staging.prefix) == []
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    assert all(isinstance(o, dict) or isinstance(o, PoolClosed) for o in outcomes)
    assert any(isinstance(o, PoolClosed) for o in outcomes)
    with pytest.raises(PoolClosed):
        await p.run("weighted_mean", {"values": np.ones((2, 2)), "weights": np.ones(2)}, {})
    await p.close()  # idempotent


async def test_start_rejects_unknown_warm_kernel():
    p = KernelPool(workers=1)
    with pytest.raises(UnknownKernel):
        await p.start(warm=["nope"])
    with pytest.raises(PoolClosed):
        p.submit("weighted_mean", {"values": np.ones((2, 2)), "weights": np.ones(2)}, {})
    await p.close()


SCRIPT_WITHOUT_MAIN_GUARD = """
import asyncio, numpy as np
from perfpilot_agent.kernels import KernelPool

async def main():
    p = KernelPool(workers=1)
    await p.start(warm=["weighted_mean"])
    r = await p.run("weighted_mean", {"values": np.ones((3, 2)), "weights": np.ones(3)}, {})
    await p.close()
    print("mean", r["mean"].tolist())

asyncio.run(main())
"""


async def test_workers_do_not_reimport_the_parent_main_module(tmp_path):
    # With plain multiprocessing spawn, this script (no __main__ guard) would recurse/fail in the
    # child; the pool strips the main module from the spawn preparation data.
    script = tmp_path / "no_guard.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "mean [1.0, 1.0]"
