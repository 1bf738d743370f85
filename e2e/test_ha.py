"""High availability on the real control plane (issue 11 items 3, 5, 7): two operator replicas
as host processes behind one webhook address (a TCP balancer standing in for the chart's
Service), one Lease.

- the leader killed: opted-in pods keep being admitted (0 refused) while the other replica takes
  over within 15 s; a spec change made meanwhile is applied by the new leader; a replica that does
  not lead writes nothing (no status patch, no scale, no resync pass);
- a webhook configuration edited or deleted behind the operator's back: patched back /
  re-created (local mode; the chart's mode, where the operator may not create, is in
  e2e/test_helm.py);
- no replica at all: the API server's refusal names the perfpilot injector and says it is
  unavailable.

Recovery times are printed ([ha] ...); the deadlines are generous bounds, not measurements.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from e2e import conftest
from e2e.harness import dev
from e2e.harness.cluster import LocalCluster, Ports

pytestmark = pytest.mark.local_harness

B = Ports().base
PROXY_PORT = 19643 + B
LEASE_NS, LEASE = "perfpilot-system", "perfpilot-operator"
MUTATING, VALIDATING = "perfpilot-pod-injector", "perfpilot-profile-validator"
TAKEOVER_BOUND = 15.0     # the promise (lease 10 s + one 2 s poll)
RESTORE_BOUND = 30.0      # one resync (1 s here) plus a loaded machine's slack


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

    def env(self, r: Replica) -> dict[str, str]:
        return {**dev.operator_env(self.cluster, webhook_port=r.webhook, health_port=r.health,
                                   metrics_port=r.metrics, resync="1s"),
                "PERFPILOT_WEBHOOK_URL_PORT": str(PROXY_PORT)}

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


@pytest.fixture(scope="module")
def pair(cluster: LocalCluster, podrunner: subprocess.Popen[bytes]) -> Iterator[Pair]:
    """Two replicas instead of the suite's operator (which is stopped meanwhile: one Lease, one
    set of webhook configurations) and started again afterwards."""
    suite_was_running = dev.stop(cluster, "operator")
    lb = Balancer(PROXY_PORT, [19543 + B, 19544 + B])
    p = Pair(cluster, Replica("ha-a", 19543 + B, 18181 + B, 18191 + B),
             Replica("ha-b", 19544 + B, 18182 + B, 18192 + B))
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


PROFILE = """
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: ha}
spec:
  selector: {matchLabels: {app: ha-selected}}
  pools: {processWorkers: 1, maxQueue: 10}
"""


def opt_in_pod(name: str) -> str:
    """Opted in, selected by no profile: the pod webhook is called and admits it without a
    sidecar (no sidecar process to start on this small machine)."""
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "labels": {"app": "ha-unselected", "perfpilot.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}})


def status_patches(log: str, namespace: str) -> int:
    return len(re.findall(rf'"PATCH /apis/perfpilot\.io/v1alpha1/namespaces/{namespace}/'
                          rf'perfprofiles/ha/status', log))


def test_leader_killed_pods_keep_being_admitted_and_the_other_takes_over(
        pair: Pair, cluster: LocalCluster, namespace: str) -> None:
    a, b = pair.a, pair.b
    until(pair, lambda: "serves webhooks only" in pair.log(b), "replica b to follow", 30)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    until(pair, lambda: json.loads(cluster.kubectl(
        "get", "pp", "ha", "-n", namespace, "-o", "json").stdout).get("status", {}).get(
        "observedGeneration") == 1, "the leader's status", 30)
    refused: list[str] = []
    admitted = 0
    t_kill = 0.0

    def create(i: int) -> None:
        nonlocal admitted
        out = cluster.kubectl("create", "-n", namespace, "-f", "-", input=opt_in_pod(f"p{i}"),
                              check=False)
        if out.returncode != 0:
            since = f"{time.monotonic() - t_kill:+.2f}s from the kill" if t_kill else "before"
            refused.append(f"p{i} ({since}): {out.stderr.strip()}")
        else:
            admitted += 1

    for i in range(5):
        create(i)
    # A follower acts on nothing: no resync pass, no status write.
    assert "resync pass over" not in pair.log(b)
    assert status_patches(pair.log(b), namespace) == 0
    assert status_patches(pair.log(a), namespace) >= 1
    t_kill = time.monotonic()
    pair.kill(a)
    # A spec change while nobody may lead: level-triggered, the next leader applies it.
    cluster.kubectl("patch", "pp", "ha", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"pools":{"maxQueue":20}}}')
    i = 5
    while holder(cluster) != b.identity:
        create(i)
        i += 1
        if time.monotonic() - t_kill > TAKEOVER_BOUND + 15:
            raise AssertionError(f"replica b did not take over\n{pair.tails()}")
        time.sleep(0.2)
    took = time.monotonic() - t_kill
    for j in range(i, i + 5):
        create(j)
    applied = until(pair, lambda: json.loads(cluster.kubectl(
        "get", "pp", "ha", "-n", namespace, "-o", "json").stdout).get("status", {}).get(
        "observedGeneration") == 2 and time.monotonic(), "the new leader applying generation 2",
        30)
    print(f"\n[ha] leader SIGKILLed: replica b leads after {took:.1f}s (bound "
          f"{TAKEOVER_BOUND:.0f}s); the spec change made meanwhile applied "
          f"{applied - t_kill:.1f}s after the kill; {admitted} opted-in pods admitted, "
          f"{len(refused)} refused")
    assert refused == [], refused[:3]
    assert took <= TAKEOVER_BOUND, f"takeover took {took:.1f}s\n{pair.tails()}"
    assert "is now the leader" in pair.log(b)
    # The killed replica comes back as a follower: it serves, and writes nothing.
    pair.start(a)
    until(pair, lambda: f"the leader is {b.identity}" in pair.log(a), "a back as a follower",
          30)
    before = status_patches(pair.log(b), namespace)
    cluster.kubectl("patch", "pp", "ha", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"pools":{"maxQueue":30}}}')
    until(pair, lambda: status_patches(pair.log(b), namespace) > before,
          "the leader writing generation 3's status", 30)
    time.sleep(3)      # a few resync intervals (1 s) of the follower
    assert holder(cluster) == b.identity
    log_a = pair.log(a)
    assert status_patches(log_a, namespace) == 0, "a follower patched a profile's status"
    assert "resync pass over" not in log_a
    assert not re.search(r'"PATCH \S+/scale ', log_a)
    assert not re.search(r'"(PATCH|PUT|POST) /apis/admissionregistration', log_a)


def webhook(cluster: LocalCluster, kind: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", kind, name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def back_to(cluster: LocalCluster, kind: str, name: str, webhooks: Any) -> Callable[[], bool]:
    def check() -> bool:
        w = webhook(cluster, kind, name)
        return w is not None and w["webhooks"] == webhooks
    return check


def test_webhook_configuration_edited_or_deleted_is_restored(pair: Pair,
                                                             cluster: LocalCluster) -> None:
    kind = "mutatingwebhookconfiguration"
    until(pair, lambda: webhook(cluster, kind, MUTATING), "the pod webhook registered", 30)
    times = {}
    for what, edit in [
            ("failurePolicy", '[{"op":"replace","path":"/webhooks/0/failurePolicy",'
                              '"value":"Ignore"}]'),
            ("caBundle", '[{"op":"replace","path":"/webhooks/0/clientConfig/caBundle",'
                         '"value":"b3RoZXI="}]'),
            ("namespaceSelector", '[{"op":"replace","path":"/webhooks/0/namespaceSelector",'
                                  '"value":{}}]')]:
        before = webhook(cluster, kind, MUTATING)
        assert before is not None
        cluster.kubectl("patch", kind, MUTATING, "--type=json", "-p", edit)
        t0 = time.monotonic()
        until(pair, back_to(cluster, kind, MUTATING, before["webhooks"]), f"{what} patched back",
              RESTORE_BOUND)
        times[what] = time.monotonic() - t0
    for kind, name in (("mutatingwebhookconfiguration", MUTATING),
                       ("validatingwebhookconfiguration", VALIDATING)):
        before = webhook(cluster, kind, name)
        assert before is not None
        cluster.kubectl("delete", kind, name)
        t0 = time.monotonic()
        until(pair, back_to(cluster, kind, name, before["webhooks"]), f"{name} re-created",
              RESTORE_BOUND)
        times[f"{kind} deleted"] = time.monotonic() - t0
    print("\n[ha] webhook configuration restored (local mode, resync 1s): "
          + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    leader = pair.b if holder(cluster) == pair.b.identity else pair.a
    assert "patched back: webhooks[sidecar-injector.perfpilot.io].failurePolicy" in \
        pair.log(leader)


def test_no_replica_answers_and_the_refusal_says_the_injector_is_unavailable(
        pair: Pair, cluster: LocalCluster, namespace: str) -> None:
    leader = pair.a if holder(cluster) == pair.a.identity else pair.b
    follower = pair.b if leader is pair.a else pair.a
    # SIGTERM (a drain, an upgrade): the leader hands the Lease over; the follower takes it at
    # its next poll instead of waiting out the lease.
    pair.stop(leader)
    t0 = time.monotonic()
    assert "released lease perfpilot-system/perfpilot-operator" in pair.log(leader)
    until(pair, lambda: holder(cluster) == follower.identity, "the follower to take over", 10)
    print(f"\n[ha] leader SIGTERMed: the follower leads {time.monotonic() - t0:.1f}s after the "
          f"leader exited (bound: one 2 s poll)")
    pair.stop(follower)
    assert holder(cluster) == "", "the last leader did not release its Lease on SIGTERM"
    try:
        out = cluster.kubectl("create", "-n", namespace, "-f", "-",
                              input=opt_in_pod(f"refused-{uuid.uuid4().hex[:4]}"), check=False)
        assert out.returncode != 0, "an opted-in pod was admitted with no webhook serving"
        print(f"\n[ha] refusal with no replica: {out.stderr.strip()}")
        assert 'failed calling webhook "sidecar-injector.perfpilot.io"' in out.stderr
        assert "/perfpilot-sidecar-injector-unavailable-check-operator-pods" in out.stderr
    finally:
        pair.start(pair.a)
        until(pair, lambda: holder(cluster) == pair.a.identity, "a to lead again", 30)
