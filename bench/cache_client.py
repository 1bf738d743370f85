"""The app side of cache_hit_speedup and kernel_cache_hit_speedup, run as its own process.

`python -m bench.cache_client SPEC_JSON` prints one JSON line. It plays an AI-agent app doing
retrieval: the expensive step is a cosine top-k of a query embedding against an embedding matrix
(n x d float32) through RunKernel, made with the real client library (perfpilot_client.AgentClient)
over the Unix socket, as an app would.

* recompute: `agent.run_kernel("cosine_topk", query=q, matrix=M, k=k)` — the library moves the
  matrix through a shared-memory segment it creates per call (>= 1 MiB), the agent runs the kernel
  on its pool and returns indices and scores.
* app cache hit: the app keys the result by a digest of its query and stores the packed result with
  CachePut; a hit is `agent.cache_get(key)` plus unpacking the arrays, key derivation included.
* kernel cache hit: `run_kernel(..., use_cache=True)` answered from the agent's digest-keyed cache.
  The agent hashes every input on every call (that is how it finds the entry), so a hit still moves
  and hashes the whole matrix; it is measured against use_cache=False calls interleaved with it.

Repeats are interleaved (recompute, kernel-cache hit, a block of app-cache hits) so noise hits all.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import xxhash

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client import AgentClient, tensors


def pack(out: dict[str, np.ndarray]) -> bytes:
    """indices (int64) then scores (float32), both [b, k]: what the app stores."""
    idx, scores = out["indices"], out["scores"]
    return np.asarray(idx.shape, np.int64).tobytes() + idx.astype("<i8").tobytes() + scores.astype("<f4").tobytes()


def unpack(raw: bytes) -> dict[str, np.ndarray]:
    """Inverse of pack (views on the received bytes, no copy)."""
    b, k = np.frombuffer(raw, np.int64, 2)
    n = int(b * k)
    idx = np.frombuffer(raw, "<i8", n, 16).reshape(int(b), int(k))
    scores = np.frombuffer(raw, "<f4", n, 16 + 8 * n).reshape(int(b), int(k))
    return {"indices": idx, "scores": scores}


def app_key(query: np.ndarray, k: int) -> str:
    """The app's cache key for a retrieval: a digest of the query embedding and k."""
    return "retrieval/" + hashlib.blake2b(query.tobytes() + k.to_bytes(4, "little"), digest_size=16).hexdigest()


def kernel_call(agent: AgentClient, use_cache: bool, **inputs: Any) -> bool:
    """run_kernel through the library's own request builder, returning the response's cache_hit flag."""
    segments = tensors.Segments(agent.segment_pool)  # as AgentClient.run_kernel does
    try:
        req = tensors.build_request("cosine_topk", inputs, use_cache=use_cache,
                                    shm_threshold=agent.shm_threshold, segments=segments)
        resp: pb.RunKernelResponse = agent.stub.RunKernel(req, timeout=60)
    finally:
        segments.close()
    tensors.decode_outputs(resp)
    return bool(resp.cache_hit)


def main(spec: dict[str, Any]) -> dict[str, Any]:
    n, d, k = spec["n"], spec["d"], spec["k"]
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    query = rng.standard_normal((1, d), dtype=np.float32)
    pc = time.perf_counter
    with AgentClient(spec["target"], timeout=60) as agent:
        agent.wait_ready()
        # first call: the app computes and caches the result
        first = agent.run_kernel("cosine_topk", query=query, matrix=matrix, k=k)
        agent.cache_put(app_key(query, k), pack(first))
        assert not kernel_call(agent, True, query=query, matrix=matrix, k=k)  # miss: stores the result
        recompute: list[float] = []
        kernel_nocache: list[float] = []
        kernel_hit: list[float] = []
        hits: list[float] = []
        hits_per_round = spec["hits_per_round"]
        for _ in range(spec["repeats"]):
            t0 = pc()
            agent.run_kernel("cosine_topk", query=query, matrix=matrix, k=k)
            recompute.append(pc() - t0)
            t0 = pc()
            kernel_call(agent, False, query=query, matrix=matrix, k=k)
            kernel_nocache.append(pc() - t0)
            t0 = pc()
            assert kernel_call(agent, True, query=query, matrix=matrix, k=k), "expected a kernel cache hit"
            kernel_hit.append(pc() - t0)
            for _ in range(hits_per_round):
                t0 = pc()
                raw = agent.cache_get(app_key(query, k))
                assert raw is not None
                got = unpack(raw)
                hits.append(pc() - t0)
            np.testing.assert_array_equal(got["indices"], first["indices"])
    med = statistics.median
    hash_s = []
    for _ in range(3):  # what a kernel-cache lookup pays per call, on this machine (same hash as the agent)
        t0 = pc()
        xxhash.xxh3_128(matrix.data.cast("B")).hexdigest()  # matrix.data: the memoryview the agent hashes
        hash_s.append(pc() - t0)
    return {
        "digest_gbps": matrix.nbytes / med(hash_s) / 1e9,
        "digest_ms": med(hash_s) * 1e3,
        "recompute_s": med(recompute),
        "hit_s": med(hits),
        "hit_p99_s": sorted(hits)[max(0, int(len(hits) * 0.99) - 1)],
        "kernel_nocache_s": med(kernel_nocache),
        "kernel_hit_s": med(kernel_hit),
        "repeats": spec["repeats"],
        "hits": len(hits),
        "matrix_mb": matrix.nbytes / 1e6,
    }


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(json.loads(sys.argv[1]))) + "\n")
