"""Restart-safe control loops and an honest status on the real control plane, with real sidecar
processes (issue 11 items 4-5): a killed sidecar comes back (same pod, same IP, fresh process
with its admission-time config) and is configured again; a sidecar pushed ahead of its profile
from inside the pod is brought back; an operator killed twice after a scale-up scales nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from e2e.conftest import E2E_METRICS_PORT
from e2e.harness import dev
from e2e.harness.cluster import LocalCluster
from e2e.test_monitoring import app_load, condition, events, replicas, sidecar_socket, status
from e2e.test_operator import agent_config, get_json
from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.usefixtures("operator")

PROFILE = """
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: watched}
spec:
  selector: {matchLabels: {app: watched}}
  pools: {processWorkers: 1, maxQueue: 77}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: watched}
spec:
  replicas: 2
  selector: {matchLabels: {app: watched}}
  template:
    metadata: {labels: {app: watched, perfpilot.io/inject: "true"}}
    spec:
      containers: [{name: app, image: example.invalid/app:1}]
"""

# One resync interval of the e2e operator is 1 s; the bound leaves room for a loaded machine
# (a sidecar process takes seconds to start) without waiting forever.
RECOVERY = 45.0


def pods(cluster: LocalCluster, ns: str) -> list[dict[str, Any]]:
    return [p for p in get_json(cluster, "pods", "-n", ns, "-l", "app=watched")["items"]
            if p["status"].get("podIP")]


def all_configured(cluster: LocalCluster, ns: str, generation: int, n: int
                   ) -> dict[str, Any] | None:
    st = status(cluster, ns)
    counts = st.get("pods") or {}
    ok = (st.get("observedGeneration") == generation and counts.get("injected") == n
          and counts.get("configured") == n
          and condition(st, "ConfigApplied").get("status") == "True")
    return st if ok else None


def generation_of(cluster: LocalCluster, ns: str, ip: str) -> int | None:
    try:
        return int(agent_config(cluster, ns, ip).generation)
    except (grpc.RpcError, OSError):
        return None      # not serving yet (a fresh process): no TLS handshake, or no answer


def sidecar_pid(cluster: LocalCluster, ns: str, pod: str) -> int | None:
    for d in (cluster.state / "pods").glob(f"{ns}_{pod}_*"):
        try:
            return int((d / "sidecar.pid").read_text())
        except (OSError, ValueError):
            return None
    return None


def operator_log(cluster: LocalCluster) -> str:
    return (cluster.logs / "operator.log").read_text(errors="replace")


def setup(cluster: LocalCluster, ns: str, wait_for: Any) -> list[dict[str, Any]]:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=DEPLOYMENT)
    wait_for(lambda: all_configured(cluster, ns, 1, 2), "2/2 sidecars configured at generation 1",
             timeout=90)
    return pods(cluster, ns)


def test_killed_sidecar_is_configured_again(cluster: LocalCluster, namespace: str,
                                            wait_for: Any) -> None:
    victim, other = setup(cluster, namespace, wait_for)
    name, ip, uid = victim["metadata"]["name"], victim["status"]["podIP"], victim["metadata"]["uid"]
    old = wait_for(lambda: sidecar_pid(cluster, namespace, name), "the sidecar's pid")
    assert generation_of(cluster, namespace, ip) == 1
    os.kill(old, signal.SIGKILL)

    # The pod runner restarts it like a kubelet (same pod, same IP, a fresh process with the
    # injected config); the operator reads generation 0 back and configures it again.
    wait_for(lambda: (pid := sidecar_pid(cluster, namespace, name)) and pid != old,
             "the pod runner to restart the sidecar", timeout=RECOVERY)
    wait_for(lambda: generation_of(cluster, namespace, ip) == 1,
             "the restarted sidecar configured at generation 1 again", timeout=RECOVERY)
    cfg = agent_config(cluster, namespace, ip)
    assert cfg.config.pools.max_queue == 77, cfg
    now = {p["metadata"]["name"]: (p["metadata"]["uid"], p["status"]["podIP"])
           for p in pods(cluster, namespace)}
    assert now[name] == (uid, ip), "the same pod, the same IP"
    wait_for(lambda: all_configured(cluster, namespace, 1, 2),
             "the status to count 2/2 configured again", timeout=RECOVERY)
    assert re.search(rf"sidecar of {re.escape(name)} reported generation 0 \(restarted",
                     operator_log(cluster)), "the operator said why it configured it again"
    assert generation_of(cluster, namespace, other["status"]["podIP"]) == 1


def test_the_pod_cannot_configure_its_sidecar(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    """Configure is operator-only: over the Unix socket (what anything in the pod reaches) it is
    PERMISSION_DENIED, and the sidecar keeps the profile's generation."""
    victim, _ = setup(cluster, namespace, wait_for)
    name, ip = victim["metadata"]["name"], victim["status"]["podIP"]
    socket = wait_for(lambda: sidecar_socket(cluster, namespace, name), "the sidecar's socket")
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.AgentStub(ch).Configure(pb.ConfigureRequest(
                generation=2**62, config=pb.AgentConfig(pools=pb.PoolsConfig(
                    process_workers=1, thread_workers=4, max_queue=5, batch_size=1))), timeout=10)
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert "operator-only" in ei.value.details()  # type: ignore[attr-defined]
        assert pb_grpc.AgentStub(ch).GetConfig(pb.GetConfigRequest(), timeout=10).generation == 1
    assert agent_config(cluster, namespace, ip).config.pools.max_queue == 77
    wait_for(lambda: all_configured(cluster, namespace, 1, 2), "2/2 configured in status",
             timeout=RECOVERY)


SCALED_PROFILE = """
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: watched}
spec:
  selector: {matchLabels: {app: watched}}
  target: {apiVersion: apps/v1, kind: Deployment, name: watched}
  pools: {processWorkers: 1}
  autoscaling:
    minReplicas: 1
    maxReplicas: 9
    metric: app_latency_p99_seconds
    target: 0.05
    interval: 1s
    scaleUp: {stabilizationWindow: 0s, maxStep: 2}
    scaleDown: {stabilizationWindow: 10m, maxStep: 1}
"""


def getstats_ok(namespace: str) -> float:
    """GetStats calls this operator process made to the profile's sidecars (0 after a start)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{E2E_METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'perfpilot_operator_getstats_calls_total\{{namespace="{namespace}",'
                  rf'profile="watched",result="OK"\}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def scaled_up_and_settled(cluster: LocalCluster, namespace: str, wait_for: Any
                          ) -> dict[str, Any]:
    """SCALED_PROFILE over a 1-replica Deployment, scaled up once by slow ops, then holding
    without traffic; the profile's status then."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=SCALED_PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=DEPLOYMENT.replace("replicas: 2", "replicas: 1"))
    pod = wait_for(lambda: next(iter(pods(cluster, namespace)), None), "the first pod")
    socket = wait_for(lambda: sidecar_socket(cluster, namespace, pod["metadata"]["name"]),
                      "the sidecar's socket", timeout=90)
    wait_for(lambda: status(cluster, namespace).get("replicas"), "the autoscaler's first decision",
             timeout=60)
    # Slow ops (p99 ~ 0.2 s against 0.05 per replica) until the first step up; the sidecar keeps
    # them in its cumulative histograms.
    with app_load(socket, [0.2]):
        wait_for(lambda: replicas(cluster, namespace) > 1, "a scale-up", timeout=90)
    # No traffic: the autoscaler settles (the next passes see no new ops: it holds).
    settled: dict[str, Any] = wait_for(
        lambda: condition(s := status(cluster, namespace), "ScalingActive")
        .get("reason") == "MissingMetrics" and s, "the autoscaler to hold", timeout=60)
    return settled


def test_operator_killed_twice_after_a_scale_up_scales_nothing(
        cluster: LocalCluster, namespace: str, wait_for: Any,
        restart_operator: Callable[[], subprocess.Popen[bytes]]) -> None:
    settled = scaled_up_and_settled(cluster, namespace, wait_for)
    size = replicas(cluster, namespace)
    steps = events(cluster, namespace, "Scaled")
    last = settled["replicas"].get("lastScaleTime")
    assert last, settled

    for n in (1, 2):
        restart_operator()
        # Several stats passes of the new process (the first one sees all history again).
        wait_for(lambda: getstats_ok(namespace) >= 4,
                 f"4 GetStats passes of restarted operator #{n}", timeout=60)
        assert replicas(cluster, namespace) == size, (
            f"operator restart #{n} scaled {size} -> {replicas(cluster, namespace)}; "
            f"log tail:\n" + "\n".join(operator_log(cluster).splitlines()[-30:]))
        st = status(cluster, namespace)
        assert st["replicas"].get("lastScaleTime") == last, st["replicas"]
    assert events(cluster, namespace, "Scaled") == steps
    assert dev.running(cluster, "operator")
