"""Session fixtures for the end-to-end suite: a real local control plane.

The suite runs on a cluster of its own (e2e/harness/suite.py: its own state dir and port base),
never the one `make demo` / `make dev-up` leaves running, whose operator would reconcile the
tests' profiles too. The cluster is started once per session and stopped after it (kept with
PERFPILOT_KEEP_CLUSTER=1, then reused by the next run). Each test gets its own namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from e2e.harness.suite import isolate

isolate()   # before the harness reads PERFPILOT_STATE / PERFPILOT_PORT_BASE

from e2e.harness import dev  # noqa: E402
from e2e.harness.anycluster import LOCAL_ONLY, ExternalCluster, external  # noqa: E402
from e2e.harness.cluster import ClusterError, LocalCluster, Ports  # noqa: E402
from e2e.harness.procs import wait_until  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "local_harness: needs the local control plane's own "
                                       "processes or kwok; skipped by `make e2e-cluster`")


# Run after every other module: it stops the host operator (the chart's takes over the webhooks).
RUNS_LAST = ("test_realpod.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in RUNS_LAST)   # stable: order kept otherwise
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
            if external() and item.get_closest_marker("local_harness"):
                item.add_marker(pytest.mark.skip(reason=LOCAL_ONLY))


def current_cluster() -> LocalCluster:
    """The cluster this session tests: the local one, or $KUBECONFIG's (make e2e-cluster)."""
    return ExternalCluster.from_env() if external() else LocalCluster()


_SESSION_START = time.time()


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    """On an e2e failure, attach the tails of the operator, pod runner and sidecar logs:
    CI shows only the test output, and a timeout alone says nothing about why."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or "/e2e/" not in str(item.path):
        return
    cluster = current_cluster()
    state = cluster.state
    logs = [state / "logs" / f"{name}.log"
            for name in ("operator", "podrunner", "scale-fleet", "kubelet", "containerd")]
    logs += sorted((state / "pods").glob("*/*.log"))[-6:]
    for log in logs:
        # Only logs this session wrote: a previous run's leftovers would mislead.
        if log.exists() and log.stat().st_mtime >= _SESSION_START:
            report.sections.append((f"log {log.relative_to(state)}", _tail(log, 60)))
    # What the cluster saw: pods and the latest events (scheduling, kwok, admission).
    for what, args in (("pods", ("get", "pods", "-A", "-o", "wide")),
                       ("events", ("get", "events", "-A", "--sort-by=.lastTimestamp"))):
        try:
            out = cluster.kubectl(*args, check=False, timeout=10)
            text = (out.stdout or out.stderr).splitlines()
            keep = text if len(text) <= 41 else text[:1] + text[-40:]   # header + latest
            report.sections.append((f"kubectl {what}", "\n".join(keep)))
        except Exception as exc:  # noqa: BLE001 - the cluster may be down; the report goes on
            report.sections.append((f"kubectl {what}", f"(unavailable: {exc})"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    if external():
        ext = ExternalCluster.from_env()
        if not ext.is_up():
            raise ClusterError(f"the cluster in {ext.kubeconfig} does not answer /readyz")
        print(f"\n[e2e] external cluster {ext.server} ({ext.kubeconfig}); nothing is started")
        ext.apply_crds()
        ext.export_ca()
        os.environ["KUBECONFIG"] = str(ext.kubeconfig)
        yield ext
        return
    c = LocalCluster()
    started_here = not c.is_up()
    if started_here:
        took = c.up()
        print(f"\n[e2e] local control plane started in {took:.1f}s")
    c.apply_crds()
    os.environ["KUBECONFIG"] = str(c.kubeconfig)
    yield c
    if started_here and not os.environ.get("PERFPILOT_KEEP_CLUSTER"):
        c.down()


@pytest.fixture()
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin needs the namespace's default SA before pods.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {name}: default ServiceAccount never appeared")
        time.sleep(0.1)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0,
              interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail naming `what`. Returns the truthy value."""
    return wait_until(predicate, what, timeout, interval)


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., Any]:
    return _wait_for


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def podrunner(cluster: LocalCluster) -> Iterator[subprocess.Popen[bytes]]:
    """Real sidecar processes for injected pods (see e2e/harness/podrunner.py)."""
    if external():
        pytest.skip(LOCAL_ONLY)
    # Leftovers of a killed run on the suite's cluster would fight ours over webhooks and pod IPs.
    for name in ("operator", "podrunner"):
        if dev.stop(cluster, name):
            print(f"\n[e2e] stopped a leftover {name} on the suite's cluster")
    proc = dev.start(cluster, "podrunner", dev.podrunner_command(), {})
    yield proc
    _stop_process(proc)
    (cluster.pids / "podrunner.pid").unlink(missing_ok=True)


# Offset like the cluster's ports (PERFPILOT_PORT_BASE), so two suites can run side by side.
E2E_WEBHOOK_PORT = 19443 + Ports().base
E2E_HEALTH_PORT = 18081 + Ports().base
E2E_METRICS_PORT = 18080 + Ports().base


def _operator_env(cluster: LocalCluster) -> dict[str, str]:
    return dev.operator_env(cluster, webhook_port=E2E_WEBHOOK_PORT, health_port=E2E_HEALTH_PORT,
                            metrics_port=E2E_METRICS_PORT, resync="1s")


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, podrunner: subprocess.Popen[bytes]
             ) -> Iterator[subprocess.Popen[bytes]]:
    """perfpilot-operator as its own process against the cluster, webhooks registered by URL."""
    # The cluster has the Prometheus Operator's PrometheusRule API, as kube-prometheus clusters
    # do: the operator keeps one per profile with alerts (e2e/test_prometheus.py).
    cluster.kubectl("apply", "-f", str(Path(__file__).parent / "fixtures" /
                                       "prometheusrule-crd.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/prometheusrules.monitoring.coreos.com")
    dev.ensure_operator_namespace(cluster)
    proc = dev.start(cluster, "operator", dev.operator_command(), _operator_env(cluster))
    dev.wait_healthy(cluster, proc, E2E_HEALTH_PORT)
    yield proc
    _stop_process(proc)
    dev.stop(cluster, "operator")     # a replacement started by restart_operator, if any
    (cluster.pids / "operator.pid").unlink(missing_ok=True)
    cluster.kubectl("delete", "mutatingwebhookconfiguration", "perfpilot-pod-injector",
                    "--ignore-not-found", check=False)
    cluster.kubectl("delete", "validatingwebhookconfiguration", "perfpilot-profile-validator",
                    "--ignore-not-found", check=False)


@pytest.fixture()
def restart_operator(cluster: LocalCluster, operator: subprocess.Popen[bytes]
                     ) -> Callable[..., subprocess.Popen[bytes]]:
    """Kill the running operator (SIGKILL: a crash, nothing cleaned up) and start a new one the
    way its Deployment would; the previous instance's log is kept as operator.<n>.log.
    `restart(while_down=f)` runs f() between the kill and the start; `env` adds settings to
    the new operator's environment (a later restart without it restores the suite's)."""
    count = [0]

    def restart(while_down: Callable[[], object] | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        pid = int((cluster.pids / "operator.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        dev.stop(cluster, "operator")      # reaps it (a zombie counts as gone)
        if while_down is not None:
            while_down()
        count[0] += 1
        log = cluster.logs / "operator.log"
        if log.exists():
            shutil.copyfile(log, cluster.logs / f"operator.{count[0]}.log")
        proc = dev.start(cluster, "operator", dev.operator_command(),
                         {**_operator_env(cluster), **(env or {})})
        dev.wait_healthy(cluster, proc, E2E_HEALTH_PORT)
        return proc

    return restart
