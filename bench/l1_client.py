"""The app side of the L1 figures, one process per role: `python -m bench.l1_client ROLE SPEC_JSON`.

Each role uses the real client library (perfpilot_client.AgentClient) over the Unix socket of a
real sidecar started with cache.l1 enabled, and prints one JSON line at the end.

* hits: the existing cosine top-k case (bench.cache_client) — recompute through RunKernel, an L2
  hit (a client with near_cache=False: CacheGet + unpack) and an L1 hit (cache_get answered in
  process + unpack), interleaved.
* reader / writer: invalidation delivery across processes. The reader fills its L1 with every key,
  prints "ready", then records when its L1 applied the event dropping each key (wall clock, the
  same host clock as the writer's); the writer overwrites the keys one by one, recording when each
  write started.
* mix: the read-mostly app — 90 % cache_get / 10 % cache_put over 10,000 keys (uniform), for a
  fixed time, with L1 on or off (near_cache=False); ops/s.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench.cache_client import app_key, pack, unpack
from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client import AgentClient


def _wait_l1(agent: AgentClient, timeout: float = 30.0) -> None:
    """Until the client's L1 serves (config read, event stream live)."""
    agent.cache_get("bench/warmup")
    deadline = time.monotonic() + timeout
    while not agent.l1.serving():
        if time.monotonic() > deadline:
            raise SystemExit("L1 never started serving: is cache.l1.enabled set on the sidecar?")
        time.sleep(0.01)


def hits(spec: dict[str, Any]) -> dict[str, Any]:
    n, d, k = spec["n"], spec["d"], spec["k"]
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal((1, d), dtype=np.float32)
    pc = time.perf_counter
    with AgentClient(spec["target"], timeout=60, near_cache=False) as l2, AgentClient(spec["target"], timeout=60) as l1:
        l2.wait_ready()
        _wait_l1(l1)
        first = l2.run_kernel("cosine_topk", query=query, matrix=matrix, k=k)
        key = app_key(query, k)
        l2.cache_put(key, pack(first))
        l1.cache_get(key)  # the fill
        recompute: list[float] = []
        l2_hits: list[float] = []
        l1_hits: list[float] = []
        for _ in range(spec["repeats"]):
            t0 = pc()
            l2.run_kernel("cosine_topk", query=query, matrix=matrix, k=k)
            recompute.append(pc() - t0)
            for _ in range(spec["hits_per_round"]):
                t0 = pc()
                raw = l2.cache_get(app_key(query, k))
                assert raw is not None
                unpack(raw)
                l2_hits.append(pc() - t0)
            for _ in range(spec["hits_per_round"] * 10):
                t0 = pc()
                raw = l1.cache_get(app_key(query, k))
                assert raw is not None
                got = unpack(raw)
                l1_hits.append(pc() - t0)
            np.testing.assert_array_equal(got["indices"], first["indices"])
        assert l1.l1.hits >= len(l1_hits), "L1 hits were answered by the sidecar"
    med = statistics.median
    return {"recompute_s": med(recompute), "l2_hit_s": med(l2_hits), "l1_hit_s": med(l1_hits),
            "l1_hit_p99_s": sorted(l1_hits)[int(len(l1_hits) * 0.99) - 1], "repeats": spec["repeats"],
            "l1_hits": len(l1_hits), "l2_hits": len(l2_hits), "matrix_mb": matrix.nbytes / 1e6}


def reader(spec: dict[str, Any]) -> dict[str, Any]:
    keys = [f"inv/{i}" for i in range(spec["keys"])]
    applied: dict[str, int] = {}
    with AgentClient(spec["target"]) as agent:
        _wait_l1(agent)
        for key in keys:
            assert agent.cache_get(key) is not None
        assert all(key in agent.l1._cache for key in keys), "keys not in L1"
        original = agent.l1.on_batch

        def on_batch(batch: pb.EventBatch) -> None:
            original(batch)
            now = time.time_ns()
            for ev in batch.events:
                for key in ev.cache.keys:
                    if key not in applied and key.startswith("inv/"):
                        applied[key] = now

        # This one instance's handler wrapped to time each invalidation (mypy refuses method assignment).
        agent.l1.on_batch = on_batch  # type: ignore[method-assign]
        print("ready", flush=True)
        deadline = time.monotonic() + spec["timeout"]
        while len(applied) < len(keys) and time.monotonic() < deadline:
            time.sleep(0.01)
        stale = [k for k in keys if k in agent.l1._cache and agent.cache_get(k) == b"old"]
    return {"applied_ns": applied, "stale": stale}


def writer(spec: dict[str, Any]) -> dict[str, Any]:
    started: dict[str, int] = {}
    with AgentClient(spec["target"], near_cache=False) as agent:
        for i in range(spec["keys"]):
            key = f"inv/{i}"
            started[key] = time.time_ns()
            agent.cache_put(key, b"new")
            time.sleep(spec["gap_s"])  # one write at a time: each delivery is measured on its own
    return {"started_ns": started}


def mix(spec: dict[str, Any]) -> dict[str, Any]:
    n_keys, value = spec["keys"], b"v" * spec["value_bytes"]
    rnd = random.Random(7)
    with AgentClient(spec["target"], near_cache=spec["l1"]) as agent:
        agent.wait_ready()
        if spec["l1"]:
            _wait_l1(agent)
        for i in range(n_keys):  # warm: every key in L2 (and L1 when on)
            agent.cache_put(f"mix/{i}", value)
        ops = 0
        deadline = time.perf_counter() + spec["seconds"]
        t0 = time.perf_counter()
        while True:
            for _ in range(100):
                key = f"mix/{rnd.randrange(n_keys)}"
                if rnd.random() < 0.9:
                    agent.cache_get(key)
                else:
                    agent.cache_put(key, value)
            ops += 100
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - t0
        l1_hits, l1_misses = agent.l1.hits, agent.l1.misses
    return {"ops_per_s": ops / elapsed, "ops": ops, "l1_hits": l1_hits, "l1_misses": l1_misses}


if __name__ == "__main__":
    role, spec_json = sys.argv[1], sys.argv[2]
    result = {"hits": hits, "reader": reader, "writer": writer, "mix": mix}[role](json.loads(spec_json))
    sys.stdout.write(json.dumps(result) + "\n")
