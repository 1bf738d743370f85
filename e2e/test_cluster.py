"""The local control plane is a real one: the API server enforces RBAC, controllers turn a
Deployment into pods, the scheduler binds them, and kwok reports them Running on 127.x IPs."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from e2e.harness.cluster import LocalCluster

pytestmark = pytest.mark.local_harness

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: agent}
spec:
  replicas: 3
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: agent
        image: example.invalid/agent:1
"""


def _pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    return json.loads(out.stdout)["items"]


def test_server_version_is_the_pinned_release(cluster: LocalCluster) -> None:
    info = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == "v1.35.4"
    assert info["serverVersion"]["minor"] == "35"


def test_admission_webhook_plugins_are_enabled(cluster: LocalCluster) -> None:
    # The API server serves the admissionregistration API and accepts a webhook config.
    resources = cluster.kubectl("api-resources", "--api-group=admissionregistration.k8s.io").stdout
    assert "mutatingwebhookconfigurations" in resources
    assert "validatingwebhookconfigurations" in resources


def test_rbac_denies_an_unprivileged_user(cluster: LocalCluster) -> None:
    out = cluster.kubectl("auth", "can-i", "create", "pods", "--as=nobody", check=False)
    assert out.stdout.strip() == "no"
    out = cluster.kubectl("auth", "can-i", "create", "pods")
    assert out.stdout.strip() == "yes"


def test_deployment_gets_running_pods_on_kwok_nodes_with_loopback_ips(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    cluster.kubectl("rollout", "status", "-n", namespace, "deploy/agent", "--timeout=60s",
                    timeout=90)
    deadline = time.monotonic() + 30
    while True:
        pods = _pods(cluster, namespace, "app=agent")
        running = [p for p in pods if p["status"].get("phase") == "Running"
                   and p["status"].get("podIP")]
        if len(running) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(running) == 3, json.dumps([p["status"] for p in pods], indent=1)
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    kwok_nodes = {n["metadata"]["name"] for n in nodes
                  if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake"}
    for pod in running:
        assert pod["spec"]["nodeName"] in kwok_nodes
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip.is_loopback, f"{pod['metadata']['name']} got {ip}, expected 127.0.0.0/8"
    assert len({p["status"]["podIP"] for p in running}) == 3, "pod IPs must be distinct"
