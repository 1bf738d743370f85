"""The injected pod as production runs it, on the real node: the chart installed by Helm with the
images built here, the operator in a container, its webhooks reached through the chart's Service;
the example app with the native sidecar in a Pod Security `restricted` namespace, shared memory
between the two containers, real cgroup limits, in-place resize by the kubelet, and a sidecar
container killed and restarted by the kubelet, then configured again by the operator.

Runs last (conftest orders it): it stops the suite's host operator, whose webhook configurations
have the same names as the chart's. On any cluster (`make e2e-cluster`) it runs with the images
named by PERFPILOT_E2E_{OPERATOR,SIDECAR,EXAMPLE_APP}_IMAGE; cgroups are read inside the
container (`kubectl exec`), so nothing here needs the host's view of the node.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e.harness import dev
from e2e.harness.anycluster import external, image_ref
from e2e.harness.cluster import LocalCluster
from e2e.harness.node import REAL_NODE_SELECTOR, REAL_NODE_TOLERATION
from e2e.harness.procs import wait_until

# Building (cached by content) and importing ~300 MB of images happens in the first test's setup.
pytestmark = pytest.mark.timeout(1800)

SIDECAR = "perfpilot-agent"
CHART_RESYNC_S = 2
MiB = 1 << 20


@dataclass(frozen=True)
class Images:
    operator: str
    sidecar: str
    app: str


@pytest.fixture(scope="module")
def images(cluster: LocalCluster) -> Images:
    """The three images, built here (cached by content) and imported into the real node, or on
    another cluster the ones named by the environment (already loaded)."""
    if external():
        refs = {c: image_ref(c) for c in ("operator", "sidecar", "example_app")}
        missing = [c for c, r in refs.items() if r is None]
        if missing:
            pytest.skip("set " + ", ".join(f"PERFPILOT_E2E_{c.upper()}_IMAGE" for c in missing)
                        + " to images loaded into the cluster's nodes (README, e2e on kind)")
        full = {c: f"{r[0]}:{r[1]}" for c, r in refs.items() if r is not None}
        return Images(full["operator"], full["sidecar"], full["example_app"])
    if not cluster.with_real_node:
        pytest.skip("PERFPILOT_REAL_NODE=0: the cluster runs without its real node")
    from e2e.harness import images as build

    t0 = time.monotonic()
    built = build.build_all(("operator", "sidecar", "example-app"))
    for image in built.values():
        cluster.node.import_image(image.tar)
    print(f"\n[realpod] images built/imported in {time.monotonic() - t0:.1f}s: "
          + ", ".join(i.ref for i in built.values()))
    return Images(built["operator"].ref, built["sidecar"].ref, built["example-app"].ref)


@pytest.fixture(scope="module")
def placement(cluster: LocalCluster) -> dict[str, Any]:
    """Pod spec fields that put a pod on the real node: its nodeSelector and toleration when the
    cluster has such a node (the local one, also in `make e2e-cluster` mode), nothing on kind."""
    nodes = kubectl_json(cluster, "get", "nodes", "-l",
                         ",".join(f"{k}={v}" for k, v in REAL_NODE_SELECTOR.items()))["items"]
    if not nodes:
        return {}
    return {"nodeSelector": REAL_NODE_SELECTOR, "tolerations": [REAL_NODE_TOLERATION]}


def kubectl_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def wait(predicate: Any, what: str, timeout: float, interval: float = 0.5) -> Any:
    return wait_until(predicate, what, timeout, interval)


def restricted(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "--overwrite",
                    "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


@pytest.fixture(scope="module")
def chart(cluster: LocalCluster, images: Images, placement: dict[str, Any],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`helm install` of the chart with the local images, the operator on the real node in a
    restricted namespace; yields the release namespace."""
    if dev.stop(cluster, "operator"):
        print("\n[realpod] stopped the suite's host operator: the chart's operator takes over")
    for kind, name in (("mutatingwebhookconfiguration", "perfpilot-pod-injector"),
                       ("validatingwebhookconfiguration", "perfpilot-profile-validator")):
        cluster.kubectl("delete", kind, name, "--ignore-not-found")
    suffix = uuid.uuid4().hex[:6]
    ns, release = f"pp-system-{suffix}", f"pp-{suffix}"
    cluster.kubectl("create", "namespace", ns)
    restricted(cluster, ns)
    home = tmp_path_factory.mktemp("helm")
    env = {**cluster.env(), "HELM_CACHE_HOME": str(home / "c"), "HELM_CONFIG_HOME": str(home / "f"),
           "HELM_DATA_HOME": str(home / "d")}

    def helm(*args: str, check: bool = True) -> str:
        import subprocess

        proc = subprocess.run([cluster.binary("helm"), *args, "-n", ns], capture_output=True,
                              text=True, env=env, timeout=400)
        if check and proc.returncode != 0:
            pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
            logs = cluster.kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/component=operator",
                                   "--tail=40", check=False)
            raise AssertionError(f"helm {args[0]} failed: {proc.stderr}\n{pods}\n"
                                 f"{logs.stdout}{logs.stderr}")
        return proc.stdout

    op_repo, op_tag = images.operator.rsplit(":", 1)
    sc_repo, sc_tag = images.sidecar.rsplit(":", 1)
    t0 = time.monotonic()
    helm("install", release, str(cluster_root() / "charts" / "perfpilot"), "--wait",
         "--timeout", "300s",
         "--set", f"image.repository={op_repo}", "--set-string", f"image.tag={op_tag}",
         "--set", "image.pullPolicy=Never",
         "--set", f"sidecar.image.repository={sc_repo}", "--set-string", f"sidecar.image.tag={sc_tag}",
         "--set", "sidecar.image.pullPolicy=Never",
         "--set", f"resyncInterval={CHART_RESYNC_S}s",
         *(a for k, v in placement.items() for a in ("--set-json", f"{k}={json.dumps(v)}")))
    print(f"[realpod] chart installed and the operator Ready in {time.monotonic() - t0:.1f}s")
    yield ns
    helm("uninstall", release, "--wait", "--timeout", "120s", check=False)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def cluster_root() -> Any:
    from e2e.harness.cluster import ROOT

    return ROOT


def example_app(image: str, app: str, placement: dict[str, Any], replicas: int = 1) -> str:
    """The example app's Deployment on the real node, compliant with `restricted`."""
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app, "perfpilot.io/inject": "true"}},
                "spec": {
                    **placement,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app", "image": image, "imagePullPolicy": "Never",
                        "ports": [{"containerPort": 8000}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8000},
                                           "periodSeconds": 2},
                        "securityContext": {
                            "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
                    }],
                },
            },
        },
    })


def profile(name: str, app: str, *, warm: list[str], sidecar: dict[str, Any] | None = None
            ) -> str:
    resources: dict[str, Any] = {"app": {"container": "app",
                                         "requests": {"cpu": "100m", "memory": "256Mi"},
                                         "limits": {"cpu": "1", "memory": "1Gi"}}}
    if sidecar is not None:
        resources["sidecar"] = sidecar
    return json.dumps({
        "apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, "resources": resources,
                 "kernels": {"warm": warm}, "cache": {"ttl": "5m", "maxEntries": 1000}},
    })


def running_pod(cluster: LocalCluster, ns: str, app: str, timeout: float = 240
                ) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for pod in kubectl_json(cluster, "get", "pods", "-n", ns, "-l", f"app={app}")["items"]:
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if pod["status"].get("phase") == "Running" and conds.get("Ready") == "True":
                return dict(pod)
        return None

    try:
        return dict(wait(ready, f"{ns}/{app} Running and Ready", timeout))
    except TimeoutError:
        out = cluster.kubectl("describe", "pods", "-n", ns, "-l", f"app={app}", check=False)
        rs = cluster.kubectl("get", "rs,events", "-n", ns, check=False)
        raise AssertionError(f"{out.stdout[-4000:]}\n{rs.stdout[-3000:]}") from None


def sidecar_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == SIDECAR)


def cgroup_memory(cluster: LocalCluster, ns: str, pod: str) -> dict[str, int]:
    """The sidecar container's own memory cgroup, read inside it (v1, else v2)."""
    script = (
        "import os\n"
        "v1 = '/sys/fs/cgroup/memory/'\n"
        "names = {'usage': 'memory.usage_in_bytes', 'max_usage': 'memory.max_usage_in_bytes',"
        " 'limit': 'memory.limit_in_bytes'} if os.path.exists(v1 + 'memory.usage_in_bytes') else"
        " {'usage': 'memory.current', 'max_usage': 'memory.peak', 'limit': 'memory.max'}\n"
        "base = v1 if names['usage'].startswith('memory.usage') else '/sys/fs/cgroup/'\n"
        "out = {}\n"
        "for k, f in names.items():\n"
        "    try:\n"
        "        v = open(base + f).read().strip()\n"
        "    except OSError:\n"
        "        continue\n"
        "    out[k] = -1 if v == 'max' else int(v)\n"
        "stat = dict(l.split() for l in open(base + 'memory.stat') if l.strip())\n"
        "for k in ('rss', 'cache', 'shmem', 'anon', 'file', 'total_rss', 'total_shmem'):\n"
        "    if k in stat:\n"
        "        out['stat_' + k] = int(stat[k])\n"
        "print(__import__('json').dumps(out))\n")
    out = cluster.kubectl("exec", "-n", ns, pod, "-c", SIDECAR, "--", "python3", "-c", script)
    return {k: int(v) for k, v in json.loads(out.stdout).items()}


def http(url: str, timeout: float = 120) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))


def status(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    return dict(kubectl_json(cluster, "get", "perfprofile", name, "-n", ns).get("status", {}))


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def mb(n: int) -> float:
    return round(n / MiB, 1)


def test_webhooks_go_through_the_charts_service(cluster: LocalCluster, chart: str) -> None:
    # The chart renders the configuration (named after the release); the operator in its
    # container patched its CA in, under the chart's RBAC (get/patch by name, no create).
    [cfg] = [c for c in kubectl_json(cluster, "get", "mutatingwebhookconfigurations")["items"]
             if c["webhooks"][0]["clientConfig"].get("service", {}).get("namespace") == chart]
    assert cfg["metadata"]["name"].endswith("-perfpilot-pod-injector"), cfg["metadata"]
    svc = cfg["webhooks"][0]["clientConfig"]["service"]
    assert svc["name"].endswith("-perfpilot"), svc
    assert cfg["webhooks"][0]["clientConfig"].get("caBundle"), "no CA patched in"
    # The chart's default 2 replicas, both Ready (both serve the webhooks under one CA) ...
    pods = kubectl_json(cluster, "get", "pods", "-n", chart, "-l",
                        "app.kubernetes.io/component=operator")["items"]
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        if placement:
            assert pod["spec"]["nodeName"] == node_name(cluster)
        assert pod["status"]["containerStatuses"][0]["ready"] is True
    # ... and one of them leads: the Lease in its namespace names it.
    [lease] = kubectl_json(cluster, "get", "leases", "-n", chart)["items"]
    assert lease["spec"]["holderIdentity"] in {p["metadata"]["name"] for p in pods}, lease["spec"]


def test_sidecar_cgroup_memory_idle_warm_loaded(cluster: LocalCluster, chart: str,
                                               images: Images, namespace: str,
                                               placement: dict[str, Any]) -> None:
    """The figures the CRD's sidecar defaults come from (crds/perfprofile.yaml, docs/kernels.md):
    the sidecar container's own memory cgroup with a limit far above its needs - idle (no
    kernel warm: workers start lazily), warm (cosine_topk compiled from the image's baked
    cache) and loaded (peak over two cosine_topk calls on a 100 MB matrix via /dev/shm)."""
    roomy = {"requests": {"cpu": "50m", "memory": "64Mi"},
             "limits": {"cpu": "500m", "memory": "2Gi"}}
    for app, warm in (("idle", []), ("warm", ["cosine_topk"])):
        cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        input=profile(f"measure-{app}", app, warm=warm, sidecar=roomy))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=example_app(images.app, app, placement))
    figures: dict[str, Any] = {}
    for app in ("idle", "warm"):
        pod = running_pod(cluster, namespace, app)
        time.sleep(3)      # settled after Ready
        figures[app] = cgroup_memory(cluster, namespace, pod["metadata"]["name"])
        assert figures[app]["limit"] == 2 << 30
    pod = running_pod(cluster, namespace, "warm")
    for _ in range(2):
        out = http(f"http://{pod['status']['podIP']}:8000/topk?mb=100&k=5", timeout=300)
        assert out["shared_memory"] is True and out["matrix_mb"] >= 100, out
    figures["loaded"] = cgroup_memory(cluster, namespace, pod["metadata"]["name"])
    assert sidecar_status(kubectl_json(cluster, "get", "pod", pod["metadata"]["name"], "-n",
                                       namespace))["restartCount"] == 0
    summary = {"idle_mib": mb(figures["idle"]["usage"]), "warm_mib": mb(figures["warm"]["usage"]),
               "loaded_peak_mib": mb(figures["loaded"]["max_usage"]), "raw": figures}
    (cluster.state / "realpod-sidecar-memory.json").write_text(json.dumps(summary, indent=1))
    print(f"\n[realpod] sidecar cgroup memory: {json.dumps(summary)}")
    # Loading a 100 MB input costs the sidecar at least the pool's own copy of it (docs/kernels.md).
    assert figures["loaded"]["max_usage"] > figures["warm"]["usage"] + 90 * MiB


def test_example_app_on_the_real_node_in_a_restricted_namespace(
        cluster: LocalCluster, chart: str, images: Images, namespace: str,
        placement: dict[str, Any]) -> None:
    """Admitted under `restricted`, native sidecar ready before the app starts, ops measured,
    the cache used, a 100 MB cosine_topk through /dev/shm shared by the two containers, the
    operator reads the stats; with the CRD's default sidecar resources nothing is OOM-killed; an
    in-place resize reaches the cgroup; a killed sidecar container comes back configured."""
    restricted(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=profile("example", "example", warm=["cosine_topk"]))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=example_app(images.app, "example", placement))
    t0 = time.monotonic()
    pod = running_pod(cluster, namespace, "example")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    print(f"\n[realpod] injected example pod Running+Ready in {time.monotonic() - t0:.1f}s")
    if placement:
        assert pod["spec"]["nodeName"] == node_name(cluster)

    # The native sidecar started (startupProbe passed) before the app container.
    side = sidecar_status(pod)
    app = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "app")
    assert side["started"] is True and side["restartCount"] == 0
    assert side["state"]["running"]["startedAt"] <= app["state"]["running"]["startedAt"]
    limits = next(c for c in pod["spec"]["initContainers"] if c["name"] == SIDECAR)["resources"]
    warm = cgroup_memory(cluster, namespace, name)
    assert warm["limit"] == parse_mi(limits["limits"]["memory"]), (warm, limits)

    # Measured ops and the cache (the app's own routes, over the pod IP from this host).
    base = f"http://{ip}:8000"
    assert http(f"{base}/work?key=a&sleep_ms=20")["cached"] is False
    assert http(f"{base}/work?key=a&sleep_ms=20")["cached"] is True
    # cosine_topk over >= 100 MB through the pod's /dev/shm, twice (the second reuses segments).
    for _ in range(2):
        out = http(f"{base}/topk?mb=100&k=5", timeout=300)
        assert out["matrix_mb"] >= 100 and out["shared_memory"] is True, out
        assert len(out["indices"]) == 4 and len(out["indices"][0]) == 5
    loaded = cgroup_memory(cluster, namespace, name)
    pod = kubectl_json(cluster, "get", "pod", name, "-n", namespace)
    side = sidecar_status(pod)
    assert side["restartCount"] == 0 and "lastState" not in {k for k, v in side.items() if v}, \
        f"sidecar restarted (OOM?) under the default limits {limits}: {side}"
    print(f"[realpod] sidecar cgroup under the defaults {limits['limits']}: warm "
          f"{mb(warm['usage'])} MiB, after two 100 MB calls {mb(loaded['usage'])} MiB, peak "
          f"{mb(loaded['max_usage'])} MiB, {loaded}")

    # The operator sees the stats: app ops, cache hits, kernel calls.
    st = wait(lambda: (s := status(cluster, namespace, "example")).get("pods", {})
              .get("configured") == 1 and cond(s, "Ready").get("status") == "True" and s,
              "the profile Ready with its sidecar configured", timeout=60)
    assert cond(st, "InjectionComplete")["reason"] == "AllInjected"
    series = (f'perfpilot_operator_profile_metric{{metric="app_latency_p95_seconds",'
              f'namespace="{namespace}",profile="example"}}')

    def seen() -> bool:
        http(f"{base}/work?key=a&sleep_ms=1")          # traffic in this resync window
        return series in operator_metrics(cluster, chart)

    wait(seen, f"the operator's {series}", timeout=60, interval=1)

    # In-place resize by the kubelet: the sidecar's memory limit in its cgroup, no restart.
    cluster.kubectl("patch", "perfprofile", "example", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"resources": {"sidecar": {"limits": {
                        "memory": f"{parse_mi(limits['limits']['memory']) // MiB + 64}Mi"}}}}}))
    want = parse_mi(limits["limits"]["memory"]) + 64 * MiB
    wait(lambda: cgroup_memory(cluster, namespace, name)["limit"] == want,
         f"the sidecar's cgroup memory limit at {want} bytes", timeout=60)
    pod = kubectl_json(cluster, "get", "pod", name, "-n", namespace)
    assert sidecar_status(pod)["restartCount"] == 0
    assert pod["metadata"]["uid"] == kubectl_json(cluster, "get", "pod", name, "-n",
                                                  namespace)["metadata"]["uid"]
    generation = int(kubectl_json(cluster, "get", "perfprofile", "example", "-n",
                                  namespace)["metadata"]["generation"])

    # The sidecar container dies; the kubelet restarts it; the operator configures it again.
    cluster.kubectl("exec", "-n", namespace, name, "-c", SIDECAR, "--", "python3", "-c",
                    "import os, signal; os.kill(1, signal.SIGTERM)")
    t_kill = time.monotonic()
    wait(lambda: sidecar_status(kubectl_json(cluster, "get", "pod", name, "-n", namespace))
         ["restartCount"] >= 1, "the kubelet restarting the sidecar container", timeout=90)
    wait(lambda: running_pod(cluster, namespace, "example", timeout=90), "pod Ready again", 90)
    assert http(f"{base}/work?key=b&sleep_ms=1")["cached"] is False    # serves the app again

    def reconfigured() -> bool:
        return agent_generation(cluster, namespace, name) == generation

    wait(reconfigured, f"the restarted sidecar reporting generation {generation}",
         timeout=CHART_RESYNC_S * 3 + 30)
    print(f"[realpod] killed sidecar back at generation {generation} "
          f"{time.monotonic() - t_kill:.1f}s after the kill")


def node_name(cluster: LocalCluster) -> str:
    [node] = kubectl_json(cluster, "get", "nodes", "-l",
                          ",".join(f"{k}={v}" for k, v in REAL_NODE_SELECTOR.items()))["items"]
    return str(node["metadata"]["name"])


def parse_mi(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(float(q[:-2]) * factor)
    return int(q)


def operator_service(cluster: LocalCluster, ns: str) -> str:
    [svc] = kubectl_json(cluster, "get", "svc", "-n", ns)["items"]
    return str(svc["metadata"]["name"])


def operator_metrics(cluster: LocalCluster, ns: str) -> str:
    """The operator's /metrics through the API server's service proxy."""
    svc = operator_service(cluster, ns)
    return cluster.kubectl("get", "--raw",
                           f"/api/v1/namespaces/{ns}/services/http:{svc}:metrics/proxy/metrics"
                           ).stdout


def agent_generation(cluster: LocalCluster, ns: str, pod: str) -> int:
    """The generation the sidecar itself reports (Heartbeat over its socket, inside the pod)."""
    script = ("from perfpilot_client import AgentClient\n"
              "import os\n"
              "c = AgentClient('unix:' + os.environ['PERFPILOT_SOCKET'], timeout=5)\n"
              "print(c.heartbeat().generation)\n")
    out = cluster.kubectl("exec", "-n", ns, pod, "-c", "app", "--", "python3", "-c", script,
                          check=False)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else -1


def scaling_profile(name: str, app: str) -> str:
    """A profile with an alert on the app's p99 and autoscaling on the same metric, fast enough
    for a test: the alert fires on the first slow pass, scale-up has no window, scale-down a
    short one, and at most 2 replicas (the real node is a small machine)."""
    return json.dumps({
        "apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile", "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
            "resources": {"app": {"container": "app",
                                  "requests": {"cpu": "100m", "memory": "256Mi"},
                                  "limits": {"cpu": "1", "memory": "1Gi"}}},
            "alerts": [{"name": "ExampleSlow", "metric": "app_latency_p99_seconds", "op": ">",
                        "threshold": 0.2, "for": "0s", "severity": "warning"}],
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2,
                            "metric": "app_latency_p99_seconds", "target": 0.1,
                            "interval": "1s",
                            "scaleUp": {"stabilizationWindow": "0s", "maxStep": 1},
                            "scaleDown": {"stabilizationWindow": "5s", "maxStep": 1}},
        },
    })


def quantity(q: str) -> float:
    """A CPU (cores) or memory (bytes) quantity as a number."""
    if q.endswith("m"):
        return int(q[:-1]) / 1000
    return float(parse_mi(q)) if q[-2:] in ("Ki", "Mi", "Gi") else float(q)


def node_room(cluster: LocalCluster, node: str) -> dict[str, float]:
    """The node's allocatable less what its live pods request, per resource (what the
    scheduler checks a new pod against)."""
    alloc = kubectl_json(cluster, "get", "node", node)["status"]["allocatable"]
    room = {r: quantity(alloc[r]) for r in ("cpu", "memory")}
    for pod in kubectl_json(cluster, "get", "pods", "-A", "--field-selector",
                            f"spec.nodeName={node}")["items"]:
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            for r in room:
                room[r] -= quantity(c.get("resources", {}).get("requests", {}).get(r, "0"))
    return room


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """A pod's requests as the scheduler sums them (native sidecars run beside the app)."""
    out = {"cpu": 0.0, "memory": 0.0}
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        for r in out:
            out[r] += quantity(c.get("resources", {}).get("requests", {}).get(r, "0"))
    return out


def operator_logs(cluster: LocalCluster, ns: str) -> str:
    out = cluster.kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/component=operator",
                          "--tail=60", check=False)
    return f"{out.stdout}{out.stderr}"


def test_alert_fires_and_the_operator_scales_the_deployment_on_the_real_node(
        cluster: LocalCluster, chart: str, images: Images, namespace: str,
        placement: dict[str, Any]) -> None:
    """The example app's slow ops (GET /work with a cache miss of 300 ms) raise its p99: the
    chart's operator fires the alert (Alerting=True, a Warning Event) and scales the Deployment
    1 -> 2 through its scale subresource; the new pod is scheduled on the real node, injected
    and Ready. Fast ops (cache hits) then resolve the alert and, after the 5 s down-window,
    bring the Deployment back to 1."""
    restricted(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=scaling_profile("scaled", "scaled"))
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=example_app(images.app, "scaled", placement))
    first = running_pod(cluster, namespace, "scaled")
    base = f"http://{first['status']['podIP']}:8000"
    # The load goes to this pod: scale-down must remove the other one.
    cluster.kubectl("annotate", "pod", first["metadata"]["name"], "-n", namespace,
                    "controller.kubernetes.io/pod-deletion-cost=100")
    if placement:
        node = node_name(cluster)
        assert first["spec"]["nodeName"] == node
        need, room = pod_requests(first), node_room(cluster, node)
        assert all(room[r] >= need[r] for r in need), \
            f"the real node has no room for a second replica: needs {need}, free {room}"

    def diagnose(what: str) -> str:
        st = status(cluster, namespace, "scaled")
        ev = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp",
                             check=False).stdout
        return (f"{what}\nprofile status: {json.dumps(st)}\nevents:\n{ev[-3000:]}\n"
                f"operator log:\n{operator_logs(cluster, chart)[-4000:]}")

    def until(predicate: Any, what: str, timeout: float) -> Any:
        try:
            return wait(predicate, what, timeout)
        except TimeoutError as exc:
            raise AssertionError(diagnose(str(exc))) from None

    def deployment() -> dict[str, Any]:
        return dict(kubectl_json(cluster, "get", "deployment", "scaled", "-n", namespace))

    # Before any traffic: the autoscaler holds (no value of the metric), nothing fires.
    st = until(lambda: (s := status(cluster, namespace, "scaled")).get("replicas") and s,
               "the autoscaler's first decision", timeout=60)
    assert cond(st, "ScalingActive")["reason"] == "MissingMetrics", st
    assert cond(st, "Alerting")["status"] == "False", st

    slow = [True]
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        """The app's clients: slow ops (a cache miss each) while slow[0], else cache hits."""
        n = 0
        while not stop.is_set():
            n += 1
            url = (f"{base}/work?key=slow-{n}&sleep_ms=300" if slow[0]
                   else f"{base}/work?key=fast&sleep_ms=1")
            try:
                http(url, timeout=30)
            except OSError as exc:
                errors.append(f"{url}: {exc}")
                stop.wait(0.5)

    thread = threading.Thread(target=load, daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        st = until(lambda: cond(s := status(cluster, namespace, "scaled"), "Alerting")
                   .get("status") == "True" and s, "the alert to fire", timeout=90)
        t_fired = time.monotonic() - t0
        [alert] = st["activeAlerts"]
        assert alert["name"] == "ExampleSlow" and alert["state"] == "firing", alert
        assert alert["value"] > 0.2, alert
        warning = until(lambda: [e for e in kubectl_json(
            cluster, "get", "events", "-n", namespace, "--field-selector",
            "involvedObject.name=scaled,reason=AlertFiring")["items"]],
            "an AlertFiring event", timeout=30)
        assert warning[0]["type"] == "Warning", warning[0]

        until(lambda: deployment()["spec"]["replicas"] == 2, "the operator scaling 1 -> 2",
              timeout=90)
        t_scaled = time.monotonic() - t0
        st = status(cluster, namespace, "scaled")
        assert "ScaledUp 1 -> 2" in st["replicas"]["reason"], st["replicas"]
        assert st["replicas"]["desired"] == 2, st["replicas"]
        scaled = [e["message"] for e in kubectl_json(
            cluster, "get", "events", "-n", namespace, "--field-selector",
            "involvedObject.name=scaled,reason=Scaled")["items"]]
        assert any("1 -> 2" in m for m in scaled), scaled

        def second_ready() -> dict[str, Any] | None:
            for pod in kubectl_json(cluster, "get", "pods", "-n", namespace, "-l",
                                    "app=scaled")["items"]:
                ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
                if pod["metadata"]["name"] != first["metadata"]["name"] \
                        and ready.get("Ready") == "True":
                    return dict(pod)
            return None

        try:
            new = wait(second_ready, "the new replica Ready", timeout=240)
        except TimeoutError:
            out = cluster.kubectl("describe", "pods", "-n", namespace, "-l", "app=scaled",
                                  check=False).stdout
            raise AssertionError(diagnose(f"the new replica never became Ready\n{out[-4000:]}")
                                 ) from None
        t_new_ready = time.monotonic() - t0
        if placement:
            assert new["spec"]["nodeName"] == node_name(cluster), new["spec"].get("nodeName")
        assert sidecar_status(new)["started"] is True
        assert SIDECAR in [c["name"] for c in new["spec"]["initContainers"]]
        print(f"\n[realpod] slow ops from t=0: alert firing at {t_fired:.1f}s, scaled 1 -> 2 at "
              f"{t_scaled:.1f}s, the new replica Ready on the real node at {t_new_ready:.1f}s")

        # Fast ops: the alert resolves; after the down-window the Deployment is back to 1.
        slow[0] = False
        t1 = time.monotonic()
        until(lambda: cond(status(cluster, namespace, "scaled"), "Alerting")
              .get("status") == "False", "the alert to resolve", timeout=90)
        t_resolved = time.monotonic() - t1
        assert kubectl_json(cluster, "get", "events", "-n", namespace, "--field-selector",
                            "involvedObject.name=scaled,reason=AlertResolved")["items"]
        until(lambda: deployment()["spec"]["replicas"] == 1, "the operator scaling 2 -> 1",
              timeout=90)
        st = status(cluster, namespace, "scaled")
        assert "ScaledDown 2 -> 1" in st["replicas"]["reason"], st["replicas"]
        assert st.get("activeAlerts") == [], st
        print(f"[realpod] fast ops: alert resolved after {t_resolved:.1f}s, scaled 2 -> 1 "
              f"after {time.monotonic() - t1:.1f}s")
    finally:
        stop.set()
        thread.join(35)
    assert not errors, errors[:5]
