"""Two operator replicas as host processes behind one webhook address (a TCP balancer standing
in for the chart's Service), for the HA and sharding scenarios (e2e/test_ha.py,
e2e/test_sharding.py). The suite's own operator is stopped meanwhile (one Lease, one set of
webhook configurations) and started again afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import conftest
from e2e.harness import dev
from e2e.harness.cluster import LocalCluster, Ports

B = Ports().base
PROXY_PORT = 19643 + B
LEASE_NS, LEASE = "perfpilot-system", "perfpilot-operator"
MUTATING, VALIDATING = "perfpilot-pod-injector", "perfpilot-profile-validator"


class Balancer:
    """A TCP balancer on PROXY_PORT: each connection goes to the first backend that accepts it
    (as a Service routes only to Ready endpoints). TLS passes through untouched."""

    def __init__(self, port: int, backends: list[int]) -> None:
        self.backends = backends
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sock.settimeout(0.5)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="ha-balancer")
        self.thread.start()

    def _serve(self) -> None:
        turn = 0
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            turn += 1
            order = self.backends[turn % len(self.backends):] + \
                self.backends[:turn % len(self.backends)]
            for port in order:
                try:
                    upstream = socket.create_connection(("127.0.0.1", port), timeout=1)
                except OSError:
                    continue
                # Blocking from here on: a kept-alive connection may idle for long (the API
                # server reuses it); closing it on a timeout would race the API server's reuse.
                upstream.settimeout(None)
                conn.settimeout(None)
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
                break
            else:
                conn.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(timeout=5)


@dataclass
class Replica:
    name: str
    webhook: int
    health: int
    metrics: int
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def identity(self) -> str:
        return f"{socket.gethostname()}:{self.webhook}"


@dataclass
class Pair:
    cluster: LocalCluster
    a: Replica
    b: Replica
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, r: Replica) -> dict[str, str]:
        return {**dev.operator_env(self.cluster, webhook_port=r.webhook, health_port=r.health,
                                   metrics_port=r.metrics, resync="1s"),
                "PERFPILOT_WEBHOOK_URL_PORT": str(PROXY_PORT), **self.extra_env}

    def start(self, r: Replica) -> None:
        log = self.cluster.logs / f"{r.name}.log"
        if log.exists():   # keep each run's log (a restarted replica starts a new one)
            log.rename(self.cluster.logs / f"{r.name}.{len(r.logs)}.log")
        r.proc = dev.start(self.cluster, r.name, [*dev.operator_command(), "--log-level=debug",
                                                  "--log-format=plain"], self.env(r))
        r.logs.append(log)
        dev.wait_healthy(self.cluster, r.proc, r.health)

    def kill(self, r: Replica) -> None:
        """SIGKILL: a crash; nothing is released."""
        assert r.proc is not None
        os.killpg(r.proc.pid, signal.SIGKILL)
        r.proc.wait()
        dev.stop(self.cluster, r.name)

    def stop(self, r: Replica) -> None:
        if r.proc is not None and r.proc.poll() is None:
            conftest._stop_process(r.proc)
        dev.stop(self.cluster, r.name)

    def log(self, r: Replica) -> str:
        return r.logs[-1].read_text(errors="replace") if r.logs else ""

    def tails(self) -> str:
        return "\n".join(f"--- {r.name} ({r.identity}) ---\n" + "\n".join(
            self.log(r).splitlines()[-40:]) for r in (self.a, self.b))


def holder(cluster: LocalCluster) -> str:
    out = cluster.kubectl("get", "lease", LEASE, "-n", LEASE_NS, "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    return str(json.loads(out.stdout)["spec"].get("holderIdentity") or "")


def until(pair: Pair, predicate: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                 f"{pair.tails()}")
        time.sleep(0.1)
    return value


@contextmanager
def replica_pair(cluster: LocalCluster, extra_env: dict[str, str] | None = None,
                 names: tuple[str, str] = ("ha-a", "ha-b")) -> Iterator[Pair]:
    """Two replicas (a started and leading first, then b) instead of the suite's operator,
    which is started again afterwards."""
    suite_was_running = dev.stop(cluster, "operator")
    lb = Balancer(PROXY_PORT, [19543 + B, 19544 + B])
    p = Pair(cluster, Replica(names[0], 19543 + B, 18181 + B, 18191 + B),
             Replica(names[1], 19544 + B, 18182 + B, 18192 + B), dict(extra_env or {}))
    try:
        p.start(p.a)
        until(p, lambda: holder(cluster) == p.a.identity, "replica a to lead", 30)
        p.start(p.b)
        yield p
    finally:
        for r in (p.a, p.b):
            p.stop(r)
        lb.close()
        if suite_was_running:     # the suite's operator, as conftest started it
            proc = dev.start(cluster, "operator", dev.operator_command(),
                             conftest._operator_env(cluster))
            dev.wait_healthy(cluster, proc, conftest.E2E_HEALTH_PORT)
        else:                     # nobody serves the balancer's address any more
            for kind, name in (("mutatingwebhookconfiguration", MUTATING),
                               ("validatingwebhookconfiguration", VALIDATING)):
                cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
