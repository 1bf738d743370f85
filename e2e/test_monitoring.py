"""The monitoring loop on the real control plane with real sidecars: an app's timings, sent with
the client library over the pod's Unix socket, raise and resolve an alert and drive the
autoscaler through the Deployment's scale subresource; silent sidecars make it hold."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import E2E_METRICS_PORT
from e2e.harness.cluster import LocalCluster
from perfpilot_client import AgentClient

pytestmark = pytest.mark.usefixtures("operator")

PROFILE = """
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: watched}
spec:
  selector: {matchLabels: {app: watched}}
  target: {apiVersion: apps/v1, kind: Deployment, name: watched}
  pools: {processWorkers: 1}
  alerts:
  - {name: AnswersSlow, metric: app_latency_p99_seconds, op: ">", threshold: 0.1, for: 0s,
     severity: critical}
  autoscaling:
    minReplicas: 1
    maxReplicas: 3
    metric: app_latency_p99_seconds
    target: 0.05
    interval: 1s
    scaleUp: {stabilizationWindow: 0s, maxStep: 4}
    scaleDown: {stabilizationWindow: 5s, maxStep: 4}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: watched}
spec:
  replicas: 1
  selector: {matchLabels: {app: watched}}
  template:
    metadata: {labels: {app: watched, perfpilot.io/inject: "true"}}
    spec:
      containers: [{name: app, image: example.invalid/app:1}]
"""


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def status(cluster: LocalCluster, ns: str) -> dict[str, Any]:
    return get_json(cluster, "perfprofile", "watched", "-n", ns).get("status", {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def replicas(cluster: LocalCluster, ns: str) -> int:
    return int(get_json(cluster, "deployment", "watched", "-n", ns)["spec"]["replicas"])


def events(cluster: LocalCluster, ns: str, reason: str) -> list[str]:
    items = get_json(cluster, "events", "-n", ns,
                     "--field-selector", f"involvedObject.name=watched,reason={reason}")["items"]
    return [e["message"] for e in items]


def pod_dir(cluster: LocalCluster, ns: str, pod: str) -> Path | None:
    """The pod runner's directory for a pod; None until its sidecar was started."""
    dirs = list((cluster.state / "pods").glob(f"{ns}_{pod}_*"))
    assert len(dirs) <= 1, f"several pod runner directories for {pod}: {dirs}"
    return dirs[0] if dirs else None


def sidecar_socket(cluster: LocalCluster, ns: str, pod: str) -> Path | None:
    d = pod_dir(cluster, ns, pod)
    return next((d / "volumes").resolve().rglob("*.sock"), None) if d else None


@contextmanager
def app_load(socket: Path, seconds_per_op: list[float]) -> Iterator[None]:
    """The app: ops timed by the client library's measure(), each lasting seconds_per_op[0]
    (changeable while running), until the block ends."""
    stop = threading.Event()
    client = AgentClient(str(socket), batch_wait=0.05)

    def run() -> None:
        while not stop.is_set():
            with client.measure("answer"):
                stop.wait(seconds_per_op[0])   # the op's work: waiting on a model, say

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        client.close()


def test_alert_fires_and_resolves_and_autoscaler_follows_the_metric(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    pod = wait_for(lambda: next((p for p in get_json(cluster, "pods", "-n", namespace,
                                                     "-l", "app=watched")["items"]
                                 if p["status"].get("podIP")), None), "the first pod")
    name = pod["metadata"]["name"]
    socket = wait_for(lambda: sidecar_socket(cluster, namespace, name),
                      "the sidecar's Unix socket", timeout=60)

    # Without traffic: no alert, and autoscaling holds (no value of the metric yet).
    st = wait_for(lambda: (s := status(cluster, namespace)).get("replicas") and s,
                  "the autoscaler's first decision", timeout=60)
    assert condition(st, "ScalingActive")["reason"] == "MissingMetrics"
    assert condition(st, "Alerting")["status"] == "False"

    latency = [0.2]
    with app_load(socket, latency):
        # Slow ops: p99 ~ 0.2 s > 0.1 fires the alert; 0.2 / 0.05 per replica asks for 4,
        # capped at maxReplicas 3.
        st = wait_for(lambda: condition(s := status(cluster, namespace), "Alerting")
                      .get("status") == "True" and s, "the alert to fire", timeout=60)
        active = st["activeAlerts"]
        assert [a["name"] for a in active] == ["AnswersSlow"]
        assert active[0]["state"] == "firing" and active[0]["severity"] == "critical"
        assert active[0]["value"] > 0.1
        assert "AnswersSlow" in condition(st, "Alerting")["message"]
        wait_for(lambda: events(cluster, namespace, "AlertFiring"), "an AlertFiring event")
        # The operator exports what it decided on, for Prometheus and Grafana.
        with urllib.request.urlopen(f"http://127.0.0.1:{E2E_METRICS_PORT}/metrics") as r:
            exposition = r.read().decode()
        assert (f'perfpilot_operator_alert_active{{alert="AnswersSlow",namespace="{namespace}",'
                f'profile="watched",severity="critical",state="firing"}} 1.0') in exposition
        assert (f'perfpilot_operator_profile_metric{{metric="app_latency_p99_seconds",'
                f'namespace="{namespace}",profile="watched"}}') in exposition
        for rpc in ("configure", "getstats"):  # the sidecar was configured and answered GetStats
            assert (f'perfpilot_operator_{rpc}_calls_total{{namespace="{namespace}",'
                    f'profile="watched",result="OK"}}') in exposition, rpc
        wait_for(lambda: replicas(cluster, namespace) == 3, "scale-up to maxReplicas 3",
                 timeout=60)
        scaled = events(cluster, namespace, "Scaled")
        assert any("1 -> 3" in m for m in scaled), scaled

        # Fast ops: the alert resolves; the autoscaler first holds for the 5 s down-window
        # (the high recommendations are still in it), then goes back to minReplicas.
        latency[0] = 0.001
        wait_for(lambda: condition(status(cluster, namespace), "Alerting")
                 .get("status") == "False", "the alert to resolve", timeout=60)
        assert events(cluster, namespace, "AlertResolved")
        held = wait_for(lambda: condition(s := status(cluster, namespace), "ScalingActive")
                        .get("reason") == "StabilizingDown" and s,
                        "the down-window holding the size", timeout=30, interval=0.05)
        assert held["replicas"]["current"] == 3 and held["replicas"]["desired"] == 3
        wait_for(lambda: replicas(cluster, namespace) == 1, "scale-down to minReplicas 1",
                 timeout=60)
    st = status(cluster, namespace)
    assert st["replicas"]["desired"] == 1 and "lastScaleTime" in st["replicas"]
    assert st.get("activeAlerts") == []


def test_silent_sidecars_make_autoscaling_hold_and_degrade(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    # queue_depth always has a value while sidecars answer (0 when idle): 0 / 50 asks for
    # fewer replicas than minReplicas 2, so the autoscaler is active and at its limit.
    profile = (PROFILE.replace("metric: app_latency_p99_seconds\n    target: 0.05",
                               "metric: queue_depth\n    target: 50")
               .replace("minReplicas: 1", "minReplicas: 2"))
    assert "queue_depth" in profile
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=profile)
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=DEPLOYMENT.replace("replicas: 1", "replicas: 2"))
    st = wait_for(lambda: (s := status(cluster, namespace)).get("pods", {}).get("configured") == 2
                  and condition(s, "ScalingActive").get("status") == "True" and s,
                  "2 sidecars configured and autoscaling active", timeout=60)
    assert condition(st, "ScalingActive")["reason"] == "AtLimit", st
    pods = [p["metadata"]["name"] for p in get_json(cluster, "pods", "-n", namespace,
                                                    "-l", "app=watched")["items"]]
    dirs = [wait_for(lambda p=p: pod_dir(cluster, namespace, p), f"{p}'s sidecar") for p in pods]
    pids = [int((d / "sidecar.pid").read_text()) for d in dirs]
    for pid in pids:               # frozen, not dead: the pod stays Running, the RPCs time out
        os.kill(pid, signal.SIGSTOP)
    try:
        st = wait_for(lambda: condition(s := status(cluster, namespace), "Degraded")
                      .get("status") == "True" and s, "Degraded", timeout=60)
        assert condition(st, "Degraded")["reason"] == "SidecarsUnreachable"
        assert "GetStats" in condition(st, "Degraded")["message"]
        st = wait_for(lambda: condition(s := status(cluster, namespace), "ScalingActive")
                      .get("reason") == "MissingMetrics" and s, "ScalingActive MissingMetrics")
        assert condition(st, "ScalingActive")["status"] == "False"
        assert st["replicas"]["desired"] == 2
        # Holding means holding: several more decisions later the target is unchanged.
        first = condition(st, "ScalingActive")["lastTransitionTime"]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert replicas(cluster, namespace) == 2
            time.sleep(0.5)
        assert condition(status(cluster, namespace), "ScalingActive")["lastTransitionTime"] == first
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: condition(status(cluster, namespace), "Degraded").get("status") == "False",
             "Degraded to clear once the sidecars answer again", timeout=60)
