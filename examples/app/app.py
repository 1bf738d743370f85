"""perfpilot's example app: a tiny HTTP service that uses its sidecar through perfpilot_client.

The operator injects the sidecar and sets PERFPILOT_SOCKET (a Unix socket in the volume both
containers share). Every request is timed with ``agent.measure`` so the sidecar's stats, the
profile's alerts and its autoscaling see real traffic.

    GET /healthz                 200 once the sidecar answers a heartbeat
    GET /work?key=K&sleep_ms=N   an "llm_call" op (sleeps N ms on a miss), its result cached in the sidecar
    GET /topk?mb=100&k=5         cosine_topk of a query batch against a float32 matrix of `mb` MB,
                                 passed through shared memory (/dev/shm of the pod)

Environment: PORT (8000), PERFPILOT_SOCKET (set by the operator), EXAMPLE_MATRIX_MB (100),
EXAMPLE_TIMEOUT_S (60: per sidecar call; a kernel that is not warm compiles on its first call).
Only the standard library, NumPy and perfpilot_client: ``pip install 'perfpilot[client-kernels]'``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from perfpilot_client import AgentClient

DIM = 256
_matrices: dict[int, np.ndarray] = {}
_lock = threading.Lock()
_clients: list[AgentClient] = []


def agent() -> AgentClient:
    """The sidecar's client, made at first use: the app starts (and answers 503) without one."""
    with _lock:
        if not _clients:
            _clients.append(AgentClient(timeout=float(os.environ.get("EXAMPLE_TIMEOUT_S", "60"))))
        return _clients[0]


def matrix(mb: int) -> np.ndarray:
    """A float32 matrix of `mb` MB (rows of DIM), made once per size."""
    with _lock:
        if mb not in _matrices:  # one per size
            rows = max(1, mb * 1_000_000 // (4 * DIM))
            _matrices[mb] = np.random.default_rng(mb).standard_normal((rows, DIM), dtype=np.float32)
        return _matrices[mb]


def work(key: str, sleep_ms: float) -> dict[str, Any]:
    """One measured op that uses the sidecar's cache: a hit skips the slow part."""
    client = agent()
    with client.measure("llm_call"):
        value = client.cache_get(f"work/{key}")
        if value is None:
            time.sleep(sleep_ms / 1000)
            value = f"answer for {key}".encode()
            client.cache_put(f"work/{key}", value)
            return {"key": key, "cached": False}
    return {"key": key, "cached": True}


def topk(mb: int, k: int) -> dict[str, Any]:
    """cosine_topk in the sidecar; the matrix travels through shared memory."""
    m = matrix(mb)
    q = m[:4] + np.float32(0.01)
    client = agent()
    t0 = time.perf_counter()
    with client.measure("topk"):
        out = client.run_kernel("cosine_topk", query=q, matrix=m, k=k)
    return {"matrix_mb": round(m.nbytes / 1e6, 1), "rows": int(m.shape[0]), "k": k,
            "indices": out["indices"].tolist(), "seconds": round(time.perf_counter() - t0, 4),
            "shared_memory": client.shm_threshold is not None and m.nbytes >= client.shm_threshold}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        qs = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/healthz":
                agent().heartbeat()
                self._reply(200, {"ok": True})
            elif url.path == "/work":
                self._reply(200, work(qs.get("key", "default"), float(qs.get("sleep_ms", "50"))))
            elif url.path == "/topk":
                mb = int(qs.get("mb", os.environ.get("EXAMPLE_MATRIX_MB", "100")))
                self._reply(200, topk(mb, int(qs.get("k", "5"))))
            else:
                self._reply(404, {"error": f"no route {url.path}; try /healthz, /work, /topk"})
        except ValueError as exc:
            self._reply(400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - report the sidecar's error to the caller
            self._reply(503, {"error": f"{type(exc).__name__}: {exc}"})

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        return None


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"example app on :{port}, sidecar at {os.environ.get('PERFPILOT_SOCKET', '(not injected)')}", flush=True)
    try:
        server.serve_forever()
    finally:
        for client in _clients:
            client.close()


if __name__ == "__main__":
    main()
