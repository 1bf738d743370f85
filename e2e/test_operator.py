"""The operator on the real control plane, with real sidecar processes for the injected pods:
inject, configure, reconfigure live without restarts, refuse conflicting profiles."""

from __future__ import annotations

import asyncio
import subprocess
import json
from typing import Any

import grpc
import pytest

from e2e.harness.cluster import BIN, ROOT, LocalCluster
from e2e.harness.trust import control_channel, operator_identity
from perfpilot_contract.trust import AGENT_SERVER_NAME
from perfpilot_operator.clients.agents import Target, fetch_server_cert
from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.usefixtures("operator")

PROFILE = """
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: agents}
spec:
  selector: {matchLabels: {app: agent}}
  resources:
    app: {container: agent, requests: {cpu: 500m, memory: 512Mi}, limits: {cpu: "2", memory: 2Gi}}
    sidecar: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 500m, memory: 256Mi}}
  pools: {processWorkers: 1, maxQueue: 100}
  cache: {ttl: 5m, maxEntries: 1000}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: agent}
spec:
  replicas: 3
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent, perfpilot.io/inject: "true"}}
    spec:
      containers: [{name: agent, image: example.invalid/agent:1}]
"""


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def profile_status(cluster: LocalCluster, ns: str) -> dict[str, Any]:
    return get_json(cluster, "perfprofile", "agents", "-n", ns).get("status", {})


def agent_config(cluster: LocalCluster, ns: str, ip: str) -> pb.GetConfigResponse:
    """Ask the sidecar itself, over its mutual-TLS control port with a certificate of the
    operator's CA: the ground truth."""
    with control_channel(operator_identity(cluster.kubectl), ip) as ch:
        return pb_grpc.AgentStub(ch).GetConfig(pb.GetConfigRequest(), timeout=5)


def no_control_from_the_app_namespace(cluster: LocalCluster, ns: str, ip: str) -> None:
    """No Secret of perfpilot in the app's namespace, and without the operator's certificate
    nothing reaches a sidecar's control calls: the health port answers UNAUTHENTICATED (unparsed),
    the control port refuses the TLS handshake."""
    secrets = get_json(cluster, "secrets", "-n", ns)["items"]
    assert not [s["metadata"]["name"] for s in secrets if "perfpilot" in json.dumps(s["metadata"])]
    with grpc.insecure_channel(f"{ip}:50052") as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.AgentStub(ch).Configure(pb.ConfigureRequest(generation=99), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert pb_grpc.AgentStub(ch).Heartbeat(pb.HeartbeatRequest(), timeout=5).generation == 1
    anonymous = grpc.ssl_channel_credentials(asyncio.run(fetch_server_cert(
        Target(ip, 50051), operator_identity(cluster.kubectl), 5.0)))
    with grpc.secure_channel(f"{ip}:50051", anonymous,
                             options=[("grpc.ssl_target_name_override", AGENT_SERVER_NAME)]) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.AgentStub(ch).Configure(pb.ConfigureRequest(generation=99), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    grpcurl = BIN / "grpcurl"          # `make peers`: a client built only from protos/
    if grpcurl.exists():
        proto = ["-import-path", str(ROOT / "protos"), "-proto", "perfpilot/v1/agent.proto", "-max-time", "10"]
        out = subprocess.run([str(grpcurl), "-plaintext", *proto, "-d", '{"generation": "99"}',
                              f"{ip}:50052", "perfpilot.v1.Agent/Configure"], capture_output=True, text=True)
        assert out.returncode == 64 + 16 and "Unauthenticated" in out.stdout + out.stderr, out
        out = subprocess.run([str(grpcurl), "-insecure", *proto, "-d", '{"generation": "99"}',
                              f"{ip}:50051", "perfpilot.v1.Agent/Configure"], capture_output=True, text=True)
        assert 0 < out.returncode < 64 and "Failed to dial" in out.stdout + out.stderr, out
    assert agent_config(cluster, ns, ip).generation == 1


def test_profile_injects_configures_and_reconfigures_live(cluster: LocalCluster, namespace: str,
                                                          wait_for: Any) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)

    # Injected at admission with the profile's resources.
    pods = wait_for(lambda: [p for p in get_json(cluster, "pods", "-n", namespace,
                                                 "-l", "app=agent")["items"]
                             if p["status"].get("podIP")] or None, "pods with IPs")
    for pod in pods:
        sidecar = [c for c in pod["spec"].get("initContainers", [])
                   if c["name"] == "perfpilot-agent"]
        assert sidecar and sidecar[0]["restartPolicy"] == "Always", "native sidecar expected"
        assert sidecar[0]["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
        app = next(c for c in pod["spec"]["containers"] if c["name"] == "agent")
        assert app["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
        assert pod["metadata"]["labels"]["perfpilot.io/profile"] == "agents"

    # Every sidecar configured at generation 1; the status says so and the sidecars agree.
    def configured(gen: int) -> dict[str, Any] | None:
        st = profile_status(cluster, namespace)
        pods = st.get("pods", {})
        ok = (st.get("observedGeneration") == gen and pods.get("selected") == 3
              and pods.get("configured") == 3)
        return st if ok else None

    st = wait_for(lambda: configured(1), "3/3 sidecars configured at generation 1", timeout=60)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", st["conditions"]
    before = {p["metadata"]["uid"]: p["status"]["podIP"] for p in
              get_json(cluster, "pods", "-n", namespace, "-l", "app=agent")["items"]}
    for ip in before.values():
        cfg = agent_config(cluster, namespace, ip)
        assert cfg.generation == 1 and cfg.config.pools.process_workers == 1
    no_control_from_the_app_namespace(cluster, namespace, next(iter(before.values())))

    # A live change reaches every sidecar; no pod is replaced or restarted.
    cluster.kubectl("patch", "perfprofile", "agents", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"pools": {"processWorkers": 2}, "cache": {"ttl": "30s"}}}')
    wait_for(lambda: configured(2), "3/3 sidecars configured at generation 2", timeout=60)
    after = get_json(cluster, "pods", "-n", namespace, "-l", "app=agent")["items"]
    assert {p["metadata"]["uid"]: p["status"]["podIP"] for p in after} == before
    assert all(cs.get("restartCount", 0) == 0 for p in after
               for cs in p["status"].get("containerStatuses", []))
    for ip in before.values():
        cfg = agent_config(cluster, namespace, ip)
        assert cfg.generation == 2
        assert cfg.config.pools.process_workers == 2
        assert cfg.config.cache.ttl.seconds == 30

    # New requests/limits reach the running pods in place through pods/resize (kwok carries
    # out no resize, so this asserts the request: the pods' spec), again without restarts.
    cluster.kubectl("patch", "perfprofile", "agents", "-n", namespace, "--type=merge", "-p",
                    '{"spec": {"resources": {"app": {"limits": {"cpu": "1"}}}}}')

    def resized() -> list[dict[str, Any]] | None:
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=agent")["items"]
        limits = [next(c for c in p["spec"]["containers"] if c["name"] == "agent")
                  ["resources"]["limits"] for p in pods]
        return pods if limits and all(lim.get("cpu") == "1" for lim in limits) else None

    after = wait_for(resized, "the app containers resized to a 1-CPU limit", timeout=60)
    assert {p["metadata"]["uid"]: p["status"]["podIP"] for p in after} == before
    for p in after:
        app = next(c for c in p["spec"]["containers"] if c["name"] == "agent")
        assert app["resources"]["limits"]["memory"] == "2Gi"      # untouched fields stay
    st = wait_for(lambda: (s := profile_status(cluster, namespace)).get("observedGeneration") == 3
                  and s, "generation 3 in status")
    cond = next(c for c in st["conditions"] if c["type"] == "ResourcesApplied")
    assert cond["status"] == "True", cond
    assert st["pods"]["stale"] == 0

    # No finalizer (nothing to clean up): deleting the profile never waits for the operator.
    profile = get_json(cluster, "perfprofile", "agents", "-n", namespace)
    assert not profile["metadata"].get("finalizers"), profile["metadata"]


def test_overlapping_profile_is_refused_naming_the_other(cluster: LocalCluster,
                                                         namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    other = PROFILE.replace("name: agents", "name: rival")
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=other, check=False)
    assert out.returncode != 0
    assert "spec.selector overlaps PerfProfile 'agents'" in out.stderr


def test_opted_in_pod_without_profile_is_admitted_with_a_warning(cluster: LocalCluster,
                                                                 namespace: str) -> None:
    pod = """
apiVersion: v1
kind: Pod
metadata: {name: loner, labels: {app: loner, perfpilot.io/inject: "true"}}
spec:
  containers: [{name: app, image: example.invalid/app:1}]
"""
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pod)
    assert "no PerfProfile" in out.stderr and "admitted without a sidecar" in out.stderr
    created = get_json(cluster, "pod", "loner", "-n", namespace)
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"]
    assert "initContainers" not in created["spec"]


def test_coverage_audit_reports_pods_running_without_the_sidecar(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    # Pods that started before the profile existed: admitted without a sidecar.
    early = DEPLOYMENT.replace("replicas: 3", "replicas: 2")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=early)
    wait_for(lambda: len([p for p in get_json(cluster, "pods", "-n", namespace,
                                              "-l", "app=agent")["items"]
                          if p["status"].get("phase") == "Running"]) == 2, "2 running pods")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)

    def audited() -> dict[str, Any] | None:
        st = profile_status(cluster, namespace)
        return st if st.get("pods", {}).get("uninjected") == 2 else None

    st = wait_for(audited, "status.pods.uninjected == 2", timeout=60)
    cond = next(c for c in st["conditions"] if c["type"] == "InjectionComplete")
    assert cond["status"] == "False" and cond["reason"] == "PodsWithoutSidecar"
    # The advice is the fix, for the Deployment found through the pods' ReplicaSet.
    assert cond["message"].endswith("re-create them: kubectl rollout restart deployment/agent"), cond
    assert "label" not in cond["message"], cond
    events = wait_for(lambda: get_json(cluster, "events", "-n", namespace, "--field-selector",
                                       "involvedObject.name=agents,reason=PodsWithoutSidecar"
                                       )["items"], "a PodsWithoutSidecar event")
    assert events[0]["type"] == "Warning"
    # The fix the message names works: recreated pods get the sidecar and the audit clears.
    cluster.kubectl("rollout", "restart", "deployment/agent", "-n", namespace)
    wait_for(lambda: (s := profile_status(cluster, namespace)).get("pods", {}).get("uninjected")
             == 0 and s["pods"].get("injected") == 2, "every pod injected after a restart",
             timeout=90)
