"""Shared cache tier figures against a real redis-server (Debian's package, loopback, no persistence).

* cache_shared_hit_speedup: a value computed and cached by replica A, read by replica B through the
  shared tier (B's own cache never had it), vs recomputing it (the cosine top-k of cache_hit_speedup).
* cache_shared_hit_ratio: the app-level hit ratio of N replicas sharing Redis vs N replicas without
  it, on the same key stream spread round-robin over them (baseline: without).
"""

from __future__ import annotations

import json
from typing import Any

from bench.common import Entry, entry, failed_entry
from bench.procs import PY, ChildFailed, Procs, wait_serving
from e2e.harness import redisserver

UNITS: dict[str, str] = {"cache_shared_hit_speedup": "x", "cache_shared_hit_ratio": "ratio"}
REPLICAS = 3


def run(quick: bool, want: Any = lambda key: True) -> dict[str, Entry]:
    """Both figures (one Redis, 2 + 2N sidecars); NOT MEASURED entries when Redis is missing."""
    if not any(want(k) for k in UNITS):
        return {}
    if redisserver.binary() is None:
        return {k: failed_entry(u, "redis-server is not installed (make debs)") for k, u in UNITS.items()}
    with redisserver.RedisServer(redisserver.port_for(10)) as redis, Procs() as procs:
        shared = {"url": redis.url, "keyPrefix": "bench:", "timeout": "100ms"}

        def sidecar(name: str, config: dict[str, Any]) -> str:
            sock = procs.path(f"{name}.sock")
            child = procs.sidecar(name, socket_path=sock, config=config)
            wait_serving(child, f"unix:{sock}")
            return f"unix:{sock}"

        light = {"pools": {"processWorkers": 0}}
        a = sidecar("shared-a", {"kernels": {"warm": ["cosine_topk"]}, "pools": {"processWorkers": 2},
                                 "cache": {"shared": shared}})
        b = sidecar("shared-b", {**light, "cache": {"shared": shared}})
        with_shared = [sidecar(f"hr-shared-{i}", {**light, "cache": {"shared": {**shared, "keyPrefix": "hr:"}}})
                       for i in range(REPLICAS)]
        without = [sidecar(f"hr-local-{i}", light) for i in range(REPLICAS)]
        spec = {"a": a, "b": b, "n": 50_000, "d": 384, "k": 10, "keys": 100 if quick else 300,
                "repeats": 7 if quick else 15, "universe": 2000, "requests": 6000 if quick else 20_000,
                "with_shared": with_shared, "without_shared": without}
        child = procs.start("shared-client", [PY, "-m", "bench.shared_client", json.dumps(spec)])
        try:
            r = child.read_json(600)
        except ChildFailed as exc:
            return {k: failed_entry(u, f"shared_client failed: {str(exc)[:300]}") for k, u in UNITS.items()}
        finally:
            procs.stop(child)
    ws, wo = r["with_shared"], r["without_shared"]
    return {
        "cache_shared_hit_speedup": entry(
            r["recompute_s"] / r["shared_hit_s"], "x", 1.0,
            f"a result computed and cached by another replica: replica A recomputes the cosine top-k (k=10, 1x384 "
            f"query vs a 50000x384 float32 matrix, {r['matrix_mb']:.0f} MB, RunKernel via perfpilot_client over the "
            f"Unix socket; median {r['recompute_s'] * 1e3:.1f} ms over {r['repeats']}) and CachePuts the packed result; "
            f"replica B's first CacheGet of each of {r['keys']} such keys misses its own cache and is answered by the "
            f"real redis-server on loopback (GET+PTTL, then B's cache is filled): median "
            f"{r['shared_hit_s'] * 1e6:.0f} us (p99 {r['shared_hit_p99_s'] * 1e6:.0f} us), vs a second read from B's "
            f"own cache {r['local_hit_s'] * 1e6:.0f} us. value = recompute / shared hit; baseline 1.0 = recomputing."),
        "cache_shared_hit_ratio": entry(
            ws["ratio"], "ratio", wo["ratio"],
            f"app-level hit ratio of {r['replicas']} replicas sharing one Redis ({ws['hits']}/{ws['requests']}) vs "
            f"{r['replicas']} replicas each with only its own cache ({wo['hits']}/{wo['requests']}), same stream: "
            f"Zipf(1.1) over 2000 keys, requests round-robin over the replicas, get then put on a miss "
            f"(1 KiB values). ratio = with / without. Writes reach Redis asynchronously (sub-millisecond here), "
            f"so a key put on one replica and read at once on the next can still miss."),
    }
