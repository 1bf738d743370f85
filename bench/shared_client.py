"""The app side of cache_shared_hit_speedup and cache_shared_hit_ratio, run as its own process.

`python -m bench.shared_client SPEC_JSON` prints one JSON line.

* speedup: on replica A the app recomputes the cosine top-k (as bench.cache_client does) and stores
  the packed result with CachePut under `keys` query keys; the sidecar writes them through to Redis.
  On replica B, whose own cache has never seen them, each first CacheGet (+ unpack) is a hit served
  by the shared tier: a value computed by another replica. Recomputes are timed on A, interleaved.
* hit ratio: the same Zipf key stream (s = 1.1 over `universe` keys) is spread round-robin over N
  replicas, as a load balancer would; the app gets, and on a miss "computes" and puts a 1 KiB
  value. Run once over N replicas sharing Redis and once over N replicas without it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench.cache_client import app_key, pack, unpack
from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client import AgentClient


def drained(agent: AgentClient, timeout: float = 30.0) -> None:
    """Wait until the sidecar has sent every pending write to the shared tier."""
    deadline = time.monotonic() + timeout
    while True:
        stats: pb.GetStatsResponse = agent.stub.GetStats(pb.GetStatsRequest(), timeout=10)
        if stats.shared_cache.up and stats.shared_cache.pending == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"shared tier not drained: {stats.shared_cache}")
        time.sleep(0.01)


def speedup(spec: dict[str, Any]) -> dict[str, Any]:
    n, d, k, keys = spec["n"], spec["d"], spec["k"], spec["keys"]
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    queries = rng.standard_normal((keys, d), dtype=np.float32)
    pc = time.perf_counter
    recompute: list[float] = []
    shared_hits: list[float] = []
    local_hits: list[float] = []
    with AgentClient(spec["a"], timeout=60) as a, AgentClient(spec["b"], timeout=60) as b:
        a.wait_ready()
        b.wait_ready()
        first = a.run_kernel("cosine_topk", query=queries[:1], matrix=matrix, k=k)
        for i in range(keys):  # the app on A computes each query once and caches it (A writes through)
            t0 = pc()
            out = a.run_kernel("cosine_topk", query=queries[i:i + 1], matrix=matrix, k=k)
            if i < spec["repeats"]:
                recompute.append(pc() - t0)
            a.cache_put(app_key(queries[i:i + 1], k), pack(out))
        drained(a)
        for i in range(keys):  # B has never seen these: each first read is a shared-tier hit
            t0 = pc()
            raw = b.cache_get(app_key(queries[i:i + 1], k))
            assert raw is not None, "expected a shared-tier hit on replica B"
            unpack(raw)
            shared_hits.append(pc() - t0)
        for i in range(keys):  # the same reads again: B's own cache now has them
            t0 = pc()
            raw = b.cache_get(app_key(queries[i:i + 1], k))
            assert raw is not None
            unpack(raw)
            local_hits.append(pc() - t0)
        stats: pb.GetStatsResponse = b.stub.GetStats(pb.GetStatsRequest(), timeout=10)
        assert stats.shared_cache.hits >= keys, stats.shared_cache
    del first
    med = statistics.median
    return {"recompute_s": med(recompute), "shared_hit_s": med(shared_hits),
            "shared_hit_p99_s": sorted(shared_hits)[max(0, int(len(shared_hits) * 0.99) - 1)],
            "local_hit_s": med(local_hits), "keys": keys, "repeats": len(recompute),
            "matrix_mb": matrix.nbytes / 1e6}


def hit_ratio(targets: list[str], stream: list[int]) -> dict[str, Any]:
    value = b"x" * 1024
    clients = [AgentClient(t, timeout=60) for t in targets]
    try:
        for c in clients:
            c.wait_ready()
        hits = 0
        for i, key in enumerate(stream):
            c = clients[i % len(clients)]
            name = f"hr/{key}"
            if c.cache_get(name) is not None:
                hits += 1
            else:
                c.cache_put(name, value)
        return {"hits": hits, "requests": len(stream), "ratio": hits / len(stream)}
    finally:
        for c in clients:
            c.close()


def zipf_stream(universe: int, requests: int, s: float = 1.1, seed: int = 7) -> list[int]:
    """A Zipf(s) stream over `universe` keys (rank 0 most popular), deterministic."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, universe + 1) ** s
    return [int(x) for x in rng.choice(universe, size=requests, p=weights / weights.sum())]


def main(spec: dict[str, Any]) -> dict[str, Any]:
    out = speedup(spec)
    stream = zipf_stream(spec["universe"], spec["requests"])
    out["with_shared"] = hit_ratio(spec["with_shared"], stream)
    out["without_shared"] = hit_ratio(spec["without_shared"], stream)
    out["replicas"] = len(spec["with_shared"])
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(json.loads(sys.argv[1]))) + "\n")
