"""The real node (e2e/harness/node.py) runs a plain pod for real: a container on the node's
bridge, Ready by a kubelet probe, with `kubectl logs`/`exec` through the API server, reachable
from the host, its resource limits written into its cgroup by the kubelet and runc."""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import node_images
from e2e.harness.cluster import LocalCluster
from e2e.harness.node import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION
from e2e.harness.procs import tail

# The local node's containerd, cgroups and kubelet port are read directly: local cluster only.
pytestmark = pytest.mark.local_harness

MEMORY_LIMIT = 64 * 1024 * 1024
CPU_LIMIT_MILLI = 200


@pytest.fixture(scope="module")
def busybox(cluster: LocalCluster) -> str:
    """The busybox-static test image, built (cached) and imported into the node."""
    if not cluster.with_real_node:
        pytest.skip("PERFPILOT_REAL_NODE=0: the cluster runs without its real node")
    ref, tar = node_images.ensure_busybox_image()
    cluster.node.import_image(tar)
    return ref


def _pod(image: str) -> dict[str, Any]:
    script = ("echo started-$(hostname); mkdir -p /tmp/www; echo hello-from-pod > "
              "/tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www")
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "nodeSelector": REAL_NODE_SELECTOR,
            "tolerations": [REAL_NODE_TOLERATION],
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "web", "image": image, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                   "periodSeconds": 1},
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                              "limits": {"cpu": f"{CPU_LIMIT_MILLI}m",
                                         "memory": str(MEMORY_LIMIT)}},
            }],
        },
    }


def _wait_ready(cluster: LocalCluster, ns: str, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = cluster.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
        if out.returncode == 0:
            pod = json.loads(out.stdout)
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if pod["status"].get("phase") == "Running" and conds.get("Ready") == "True":
                return pod
        time.sleep(0.3)
    describe = cluster.kubectl("describe", "pod", name, "-n", ns, check=False).stdout
    raise AssertionError(
        f"pod {ns}/{name} not Running+Ready after {timeout:.0f}s\n{describe[-3000:]}\n"
        f"--- kubelet.log ---\n{tail(cluster.logs / 'kubelet.log', 40)}\n"
        f"--- containerd.log ---\n{tail(cluster.logs / 'containerd.log', 20)}")


def _container_cgroup(cluster: LocalCluster, pod: dict[str, Any], controller: str) -> Path:
    """The container's cgroup directory in a v1 hierarchy, found under the node's cgroup root."""
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    root = Path("/sys/fs/cgroup") / controller / cluster.node.cgroup_root.lstrip("/")
    found = [p for p in root.rglob(cid) if p.is_dir()]
    assert found, f"no cgroup named {cid} under {root}"
    return found[0]


def test_plain_pod_runs_on_the_real_node(cluster: LocalCluster, namespace: str,
                                         busybox: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_pod(busybox)))
    pod = _wait_ready(cluster, namespace, "web", timeout=90)

    assert pod["spec"]["nodeName"] == cluster.node.name
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.node.subnet), ip
    assert ip != cluster.node.node_ip

    # Logs and exec go API server -> kubelet (client certificate, webhook authz) -> containerd.
    logs = cluster.kubectl("logs", "web", "-n", namespace).stdout
    assert "started-web" in logs, logs
    out = cluster.kubectl("exec", "web", "-n", namespace, "--", "sh", "-c",
                          "echo $((6 * 7))").stdout
    assert out.strip() == "42", out

    # The pod's IP answers from the host, over the node's bridge.
    with urllib.request.urlopen(f"http://{ip}:8080/index.html", timeout=5) as resp:
        assert resp.read().decode().strip() == "hello-from-pod"

    # Limits are real: the kubelet set them in the container's cgroups.
    mem = _container_cgroup(cluster, pod, "memory")
    assert int((mem / "memory.limit_in_bytes").read_text()) == MEMORY_LIMIT
    cpu = _container_cgroup(cluster, pod, "cpu")
    quota, period = (int((cpu / f).read_text()) for f in ("cpu.cfs_quota_us",
                                                         "cpu.cfs_period_us"))
    assert quota * 1000 // period == CPU_LIMIT_MILLI


def test_kubelet_refuses_anonymous_requests(cluster: LocalCluster, busybox: str) -> None:
    """The kubelet API authenticates (x509 of the cluster CA, or a token via TokenReview)."""
    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca_crt))
    url = f"https://{cluster.node.node_ip}:{cluster.node.kubelet_port}/pods"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=5, context=ctx)
    assert err.value.code == 401
    # With the API server's own kubelet client certificate, the same call is allowed.
    ctx.load_cert_chain(str(cluster.pki.dir / "kube-apiserver-kubelet-client.crt"),
                        str(cluster.pki.dir / "kube-apiserver-kubelet-client.key"))
    with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
        assert json.loads(resp.read())["kind"] == "PodList"


def test_pod_reaches_the_api_server_in_cluster_and_nothing_else(
        cluster: LocalCluster, namespace: str, busybox: str) -> None:
    """In-cluster clients (the operator's container) find the API server the standard way:
    the `kubernetes` Service env, the ServiceAccount token and CA. No route leads off-node."""
    ref, tar = node_images.ensure_kubectl_image(cluster.bin / "kubectl")
    cluster.node.import_image(tar)
    script = ("kubectl auth whoami -o jsonpath='{.status.userInfo.username}'; echo; "
              "if nc -w 2 1.1.1.1 53 </dev/null; then echo offnet=open; "
              "else echo offnet=blocked; fi")
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {
            "nodeSelector": REAL_NODE_SELECTOR, "tolerations": [REAL_NODE_TOLERATION],
            "restartPolicy": "Never",
            "containers": [{"name": "client", "image": ref, "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", script]}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + 90
    phase = ""
    while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
        time.sleep(0.5)
        phase = cluster.kubectl("get", "pod", "client", "-n", namespace, "-o",
                                "jsonpath={.status.phase}", check=False).stdout
    logs = cluster.kubectl("logs", "client", "-n", namespace, check=False)
    assert phase == "Succeeded", (phase, logs.stdout, logs.stderr,
                                  tail(cluster.logs / "kubelet.log", 30))
    # stdout and stderr (nc's own error) interleave in any order in the container log
    lines = logs.stdout.splitlines()
    assert f"system:serviceaccount:{namespace}:default" in lines, logs.stdout
    assert "offnet=blocked" in lines and "offnet=open" not in lines, logs.stdout
