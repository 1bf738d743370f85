"""The Helm chart on the real local control plane: install, RBAC, upgrade, uninstall.

kwok reports the operator's pod Running without running it, so the helm-installed operator never
registers webhooks; the ClusterRole is proven twice instead: `kubectl auth can-i` as the chart's
ServiceAccount, and the real operator process run on this machine with that ServiceAccount's
token (restricted to a namespace of its own and with webhook registration off, so it cannot
disturb the suite's own operator and its perfpilot-pod-injector / perfpilot-profile-validator).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness.anycluster import helm_image_args
from e2e.harness.cluster import ROOT, LocalCluster

CHART = ROOT / "charts" / "perfpilot"
CRD = "perfprofiles.perfpilot.io"


@dataclass
class Release:
    cluster: LocalCluster
    name: str
    namespace: str
    helm_env: dict[str, str]
    install_output: str = ""

    @property
    def fullname(self) -> str:
        return f"{self.name}-perfpilot"

    @property
    def sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def helm(self, *args: str, check: bool = True, timeout: float = 180
             ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.cluster.binary("helm"), *args, "-n", self.namespace],
                              capture_output=True, text=True, env=self.helm_env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def get(self, kind: str, name: str, namespaced: bool = True) -> dict[str, Any] | None:
        ns = ["-n", self.namespace] if namespaced else []
        out = self.cluster.kubectl("get", kind, name, *ns, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def review(self, verb: str, group: str, resource: str, namespace: str = "anywhere"
               ) -> bool:
        """A SubjectAccessReview: unlike `kubectl auth can-i`, it needs no served resource
        (this cluster has no Prometheus Operator CRDs)."""
        out = self.cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": self.sa, "groups": ["system:serviceaccounts",
                                                 f"system:serviceaccounts:{self.namespace}",
                                                 "system:authenticated"],
                     "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                            "namespace": namespace}}}))
        return bool(json.loads(out.stdout)["status"].get("allowed"))

    def can_i(self, verb: str, resource: str, *flags: str) -> bool:
        out = self.cluster.kubectl("auth", "can-i", verb, resource, f"--as={self.sa}", *flags,
                                   check=False)
        assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
        return out.stdout.strip() == "yes"


def _wait(predicate, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
    return value


def _operator_pods(r: Release) -> list[dict[str, Any]]:
    out = r.cluster.kubectl("get", "pods", "-n", r.namespace, "-l",
                            f"app.kubernetes.io/instance={r.name},"
                            "app.kubernetes.io/component=operator", "-o", "json")
    return json.loads(out.stdout)["items"]


def _running_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp") \
        and any(c["type"] == "Ready" and c["status"] == "True"
                for c in status.get("conditions", []))


def _env(dep: dict[str, Any]) -> dict[str, Any]:
    [c] = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def _webhooks_pointing_at(cluster: LocalCluster, namespace: str) -> list[str]:
    found = []
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        items = json.loads(cluster.kubectl("get", kind, "-o", "json").stdout)["items"]
        for cfg in items:
            for wh in cfg.get("webhooks", []):
                if wh["clientConfig"].get("service", {}).get("namespace") == namespace:
                    found.append(f"{kind}/{cfg['metadata']['name']}")
    return found


@pytest.fixture(scope="module")
def release(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Release]:
    """The chart installed (helm install --wait) into a fresh namespace; removed afterwards,
    with every cluster-scoped object it created, but never the CRD (the suite shares it)."""
    suffix = uuid.uuid4().hex[:6]
    helm_home = tmp_path_factory.mktemp("helm")
    env = {**cluster.env(), "HELM_CACHE_HOME": str(helm_home / "cache"),
           "HELM_CONFIG_HOME": str(helm_home / "config"),
           "HELM_DATA_HOME": str(helm_home / "data")}
    r = Release(cluster, f"pp-{suffix}", f"e2e-helm-{suffix}", env)
    # Pod Security `restricted` enforced where the chart goes: the operator's pod and the
    # uninstall hook's Job pod are admitted by the API server's own policy, or nothing runs.
    cluster.kubectl("create", "namespace", r.namespace)
    cluster.kubectl("label", "namespace", r.namespace,
                    "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    r.install_output = r.helm("install", r.name, str(CHART), *helm_image_args(),
                              "--wait", "--timeout", "120s").stdout
    yield r
    r.helm("uninstall", r.name, "--wait", "--timeout", "120s", "--ignore-not-found",
           check=False)
    selector = f"app.kubernetes.io/instance={r.name}"
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", "-l", selector,
                    "--ignore-not-found", check=False)
    # Only on a cluster that really runs the operator (kind) could it have registered any.
    for name in _webhooks_pointing_at(cluster, r.namespace):
        cluster.kubectl("delete", name, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", r.namespace, "--wait=false", check=False)


# ------------------------------------------------------------------------------------ install
def test_install_creates_the_operator_and_its_rbac(release: Release) -> None:
    r = release
    status = json.loads(r.helm("status", r.name, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    notes = r.install_output
    assert "perfpilot.io/inject=true" in notes and "kubectl describe perfprofile" in notes

    crd = r.get("crd", CRD, namespaced=False)
    assert crd is not None
    assert any(c["type"] == "Established" and c["status"] == "True"
               for c in crd["status"]["conditions"])
    assert r.get("serviceaccount", r.fullname) is not None
    role = r.get("clusterrole", r.fullname, namespaced=False)
    assert role is not None and role["rules"]
    binding = r.get("clusterrolebinding", r.fullname, namespaced=False)
    assert binding is not None
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": r.fullname,
                                    "namespace": r.namespace}]
    # the CA Secret's rules: a Role of the release's namespace, none cluster-wide
    assert not [x for x in role["rules"] if "secrets" in x["resources"]]
    ca_role = r.get("role", f"{r.fullname}-ca")
    assert ca_role is not None and {tuple(x.get("resourceNames", ())) for x in ca_role["rules"]} == {
        ("perfpilot-operator-ca",), ()}
    assert r.get("rolebinding", f"{r.fullname}-ca") is not None
    svc = r.get("service", r.fullname)
    assert svc is not None
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"webhook": 9443,
                                                                    "metrics": 8080}
    dep = r.get("deployment", r.fullname)
    assert dep is not None
    assert dep["status"].get("availableReplicas") == 1
    env = _env(dep)
    assert env["PERFPILOT_WEBHOOK_SERVICE"] == f"{r.namespace}/{r.fullname}"
    assert env["PERFPILOT_NAMESPACE"] == {"fieldRef": {"apiVersion": "v1",
                                                       "fieldPath": "metadata.namespace"}}


@pytest.mark.local_harness
def test_operator_pod_runs_on_a_kwok_node(release: Release) -> None:
    r = release
    [pod] = _wait(lambda: [p for p in _operator_pods(r) if _running_ready(p)],
                  "the operator pod Running and Ready", timeout=60)
    node = json.loads(r.cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o",
                                        "json").stdout)
    assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
    assert pod["spec"]["serviceAccountName"] == r.fullname
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    # kwok runs nothing, so this operator registered no webhooks.
    assert _webhooks_pointing_at(r.cluster, r.namespace) == []


# ------------------------------------------------------------------------------------ RBAC
ALLOWED = [
    # kopf: the PerfProfile watch, its bookkeeping patches and status; Events
    ("list", "perfprofiles.perfpilot.io", "-A"),
    ("watch", "perfprofiles.perfpilot.io", "-A"),
    ("patch", "perfprofiles.perfpilot.io", "-n", "anywhere"),
    ("patch", "perfprofiles.perfpilot.io", "--subresource=status", "-n", "anywhere"),
    ("create", "events", "-n", "anywhere"),
    ("list", "pods", "-A"), ("watch", "pods", "-A"),
    ("patch", "pods", "--subresource=resize", "-n", "anywhere"),   # in-place resize
    ("watch", "horizontalpodautoscalers.autoscaling", "-A"),
    ("watch", "replicasets.apps", "-A"),        # pods refused at creation (ReplicaFailure)
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    # the operator's CA Secret, in the release's namespace only ({release}: substituted)
    ("create", "secrets", "-n", "{release}"),
    ("get", "secrets/perfpilot-operator-ca", "-n", "{release}"),
    ("update", "secrets/perfpilot-operator-ca", "-n", "{release}"),
    # the webhook configurations, registered by the operator itself
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("update", "mutatingwebhookconfigurations.admissionregistration.k8s.io/perfpilot-pod-injector"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("update", "validatingwebhookconfigurations.admissionregistration.k8s.io/"
               "perfpilot-profile-validator"),
    # autoscaling through the scale subresource
    ("get", "deployments.apps", "--subresource=scale", "-n", "anywhere"),
    ("patch", "deployments.apps", "--subresource=scale", "-n", "anywhere"),
    ("patch", "statefulsets.apps", "--subresource=scale", "-n", "anywhere"),
]
DENIED = [
    ("delete", "namespaces"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("delete", "nodes"), ("create", "pods", "-n", "anywhere"),
    ("delete", "pods", "-n", "anywhere"), ("patch", "pods", "-n", "anywhere"),
    ("delete", "perfprofiles.perfpilot.io", "-A"),
    ("list", "secrets", "-A"), ("get", "secrets/someone-elses", "-n", "anywhere"),
    # no Secret outside the release's namespace; there, only its CA Secret by name
    ("create", "secrets", "-n", "anywhere"), ("get", "secrets/perfpilot-agent-token", "-n", "anywhere"),
    ("get", "secrets/perfpilot-operator-ca", "-n", "anywhere"),
    ("get", "secrets/someone-elses", "-n", "{release}"), ("list", "secrets", "-n", "{release}"),
    ("update", "secrets/someone-elses", "-n", "{release}"),
    ("update", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses"),
    ("delete", "mutatingwebhookconfigurations.admissionregistration.k8s.io/"
               "perfpilot-pod-injector"),
    ("patch", "deployments.apps", "-n", "anywhere"),       # only the scale subresource
    ("update", "deployments.apps", "--subresource=scale", "-n", "anywhere"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
]


def _in(release: Release, check: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a.replace("{release}", release.namespace) for a in check)


def test_service_account_may_do_what_the_operator_does(release: Release) -> None:
    refused = [" ".join(c) for c in ALLOWED if not release.can_i(*_in(release, c))]
    # each profile's alerts as a PrometheusRule (where Prometheus Operator runs)
    refused += [f"{v} prometheusrules" for v in ("get", "create", "update", "delete")
                if not release.review(v, "monitoring.coreos.com", "prometheusrules")]
    assert refused == [], f"the chart's ServiceAccount may not: {refused}"


def test_service_account_may_not_do_more(release: Release) -> None:
    allowed = [" ".join(c) for c in DENIED if release.can_i(*_in(release, c))]
    allowed += [f"{v} {g}/{r}" for v, g, r in [
        ("list", "monitoring.coreos.com", "prometheusrules"),
        ("create", "monitoring.coreos.com", "servicemonitors")]
        if release.review(v, g, r)]
    assert allowed == [], f"the chart's ServiceAccount may: {allowed}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUN_OPERATOR = """
import asyncio, sys
import kopf
from perfpilot_operator.settings import Settings
import perfpilot_operator.handlers  # noqa: F401 - the operator's own handlers, startup included


@kopf.on.startup()
def quick_retries(settings: kopf.OperatorSettings, **_: object) -> None:
    # Not cluster-wide, kopf tries to list namespaces (403 here) nine times with backoffs
    # summing to a minute before it settles for the one namespace it was given.
    settings.networking.error_backoffs = [0.1, 0.2]


s = Settings.from_env()
kopf.configure(verbose=True, log_format=kopf.LogFormat.FULL)
asyncio.run(kopf.operator(namespaces=[sys.argv[1]], clusterwide=False, standalone=True,
                          memo=kopf.Memo(settings=s),
                          liveness_endpoint=f"http://{s.health_host}:{s.health_port}/healthz"))
"""


PROBE = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: probe}
spec:
  replicas: 1
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      containers: [{name: app, image: example.invalid/app:1}]
---
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: rbac-probe}
spec:
  selector: {matchLabels: {app: probe}}
  target: {apiVersion: apps/v1, kind: Deployment, name: probe}
  autoscaling: {minReplicas: 1, maxReplicas: 2, metric: queue_depth, target: 50, interval: 1s}
"""
# urllib3's debug line for each call the official client makes, e.g.
#   https://127.0.0.1:6443 "GET /api/v1/namespaces/x/secrets/y HTTP/1.1" 200 721
NAMESPACE_LIST = re.compile(r'/api/v1/namespaces([?\s]|$)|"namespaces" in API group ""|'
                            r"(list|watch for|list of) namespaces")
CLIENT_CALL = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1.1" (\d{3})')


def test_operator_runs_under_the_charts_rbac_without_a_forbidden(
        release: Release, tmp_path: Path) -> None:
    """The real operator, authenticated as the chart's ServiceAccount, with the chart's
    environment, reconciles a profile whose pod runs without the sidecar and whose target it
    autoscales: kopf's watches, patches, status and Events, its CA Secret (in the release's
    namespace, none in the profile's) and the scale subresource - and the API server never
    answers 403."""
    r, c = release, release.cluster
    work = f"{r.namespace}-work"
    c.kubectl("create", "namespace", work)
    proc = None
    log_path = tmp_path / "operator.log"
    try:
        token = c.kubectl("create", "token", r.fullname, "-n", r.namespace,
                          "--duration=10m").stdout.strip()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "local", "cluster": {
                "server": c.server, "certificate-authority": str(c.pki.ca_crt)}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}]}))
        dep = r.get("deployment", r.fullname)
        assert dep is not None
        health = _free_port()
        env = {k: v for k, v in _env(dep).items() if isinstance(v, str)}   # the chart's values
        env.update({   # what differs on this machine; the webhook configurations stay untouched
            "PERFPILOT_NAMESPACE": r.namespace,
            "PERFPILOT_WEBHOOK_HOST": "127.0.0.1", "PERFPILOT_WEBHOOK_PORT": str(_free_port()),
            "PERFPILOT_HEALTH_HOST": "127.0.0.1", "PERFPILOT_HEALTH_PORT": str(health),
            "PERFPILOT_METRICS_HOST": "127.0.0.1", "PERFPILOT_METRICS_PORT": str(_free_port()),
            "PERFPILOT_CERT_DIR": str(tmp_path / "certs"), "PERFPILOT_REGISTER_WEBHOOKS": "false",
            "PERFPILOT_RESYNC_INTERVAL": "1s",
        })
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", RUN_OPERATOR, work], cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("PERFPILOT_")},
                     **env, "KUBECONFIG": str(kubeconfig)})

        def healthy() -> bool:
            assert proc is not None
            if proc.poll() is not None:
                raise AssertionError(f"operator exited {proc.returncode}:\n"
                                     f"{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        _wait(healthy, "the operator's /healthz", timeout=60)
        # The suite's own operator may be registering or dropping its PerfProfile webhook
        # (failurePolicy Fail) at this moment: retry while the API server cannot call it.
        applied: list[str] = []

        def apply_probe() -> bool:
            out = c.kubectl("apply", "-n", work, "-f", "-", input=PROBE, check=False)
            applied.append(out.stderr)
            return out.returncode == 0

        try:
            _wait(apply_probe, "the probe profile applied", timeout=30)
        except TimeoutError as e:
            raise AssertionError(f"{e}: {applied[-1]}") from None

        def reconciled() -> dict[str, Any] | None:
            pp = json.loads(c.kubectl("get", "pp", "rbac-probe", "-n", work, "-o",
                                      "json").stdout)
            st = pp.get("status", {})
            conds = {x["type"] for x in st.get("conditions", [])}
            done = st.get("observedGeneration") == 1 and st.get("pods", {}).get("uninjected") \
                and "ScalingActive" in conds
            return pp if done else None

        pp = _wait(reconciled, "the profile reconciled (status, coverage, autoscaling)")
        messages = [x.get("message", "") for x in pp["status"]["conditions"]]
        assert not [m for m in messages if re.search(r"forbidden|\b403\b", m, re.I)], messages
        _wait(lambda: c.kubectl("get", "secret", "perfpilot-operator-ca", "-n", r.namespace,
                                check=False).returncode == 0, "the operator's CA Secret")
        assert json.loads(c.kubectl("get", "secrets", "-n", work, "-o", "json").stdout)["items"] == []
        _wait(lambda: json.loads(c.kubectl(
            "get", "events", "-n", work, "--field-selector",
            "involvedObject.kind=PerfProfile,involvedObject.name=rbac-probe,"
            "reason=PodsWithoutSidecar", "-o", "json").stdout)["items"],
            "the coverage audit's PodsWithoutSidecar Event")
        _wait(lambda: log_path.read_text().count("resync pass over") >= 2,
              "two resync passes of this operator")
        # /metrics as the chart's ServiceMonitor scrapes it (path /metrics on the metrics port).
        with urllib.request.urlopen(
                f"http://127.0.0.1:{env['PERFPILOT_METRICS_PORT']}/metrics", timeout=5) as m:
            exported = m.read().decode()
        assert f'perfpilot_operator_pods{{namespace="{work}",profile="rbac-probe"' in exported
        c.kubectl("delete", "pp", "rbac-probe", "-n", work, "--timeout=60s", timeout=90)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A profile left with kopf's finalizer would keep the namespace Terminating.
        c.kubectl("patch", "pp", "rbac-probe", "-n", work, "--type=merge", "-p",
                  '{"metadata":{"finalizers":null}}', check=False)
        c.kubectl("delete", "namespace", work, "--wait=false", check=False)
    log = log_path.read_text()
    # Searched without the leading "[date time,ms]": a timestamp's milliseconds can read 403.
    forbidden = [line for line in log.splitlines()
                 if re.search(r"\b403\b|forbidden|not enough permissions",
                              re.sub(r"^\[[^\]]*\]", "", line), re.I)
                 # kopf lists and watches namespaces only when not cluster-wide, as here; the
                 # chart's operator runs cluster-wide (__main__.py) and never does.
                 and not NAMESPACE_LIST.search(line)]
    assert forbidden == [], "\n".join(forbidden[:20])
    calls = {(m[1], m[2].split("?")[0], m[3]) for m in CLIENT_CALL.finditer(log)}
    assert ("GET", f"/apis/apps/v1/namespaces/{work}/deployments/probe/scale", "200") in calls, \
        sorted(calls)
    secrets = {(v, p) for v, p, code in calls if "/secrets" in p}
    assert secrets <= {("GET", f"/api/v1/namespaces/{r.namespace}/secrets/perfpilot-operator-ca"),
                       ("POST", f"/api/v1/namespaces/{r.namespace}/secrets"),
                       ("PUT", f"/api/v1/namespaces/{r.namespace}/secrets/perfpilot-operator-ca")}, \
        sorted(calls)
    assert ("GET", f"/api/v1/namespaces/{r.namespace}/secrets/perfpilot-operator-ca") in secrets
    assert re.search(r"Handler 'reconcile-(create|resume)' succeeded", log), log[-3000:]


# ------------------------------------------------------------------------------------ upgrade
def test_upgrade_changes_the_operator_environment(release: Release) -> None:
    r = release
    before = r.get("deployment", r.fullname)
    assert before is not None and _env(before)["PERFPILOT_RESYNC_INTERVAL"] == "5s"
    old_pods = {p["metadata"]["uid"] for p in _operator_pods(r)}
    r.helm("upgrade", r.name, str(CHART), "--reuse-values", "--set", "resyncInterval=30s",
           "--set", "logLevel=debug", "--wait", "--timeout", "120s")
    dep = r.get("deployment", r.fullname)
    assert dep is not None
    assert _env(dep)["PERFPILOT_RESYNC_INTERVAL"] == "30s"
    assert "--log-level=debug" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dep["metadata"]["generation"] > before["metadata"]["generation"]
    # Recreate: the one pod that runs now carries the new environment.
    [pod] = _wait(lambda: [p for p in _operator_pods(r) if _running_ready(p)
                           and p["metadata"]["uid"] not in old_pods], "the new operator pod")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["PERFPILOT_RESYNC_INTERVAL"] == "30s"
    status = json.loads(r.helm("status", r.name, "-o", "json").stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"


def test_upgrade_with_a_bad_value_is_refused_before_anything_changes(release: Release) -> None:
    r = release
    version = json.loads(r.helm("status", r.name, "-o", "json").stdout)["version"]
    out = r.helm("upgrade", r.name, str(CHART), "--reuse-values", "--set", "replicas=abc",
                 check=False)
    assert out.returncode != 0
    assert "/replicas" in out.stderr and "want integer" in out.stderr, out.stderr
    status = json.loads(r.helm("status", r.name, "-o", "json").stdout)
    assert status["version"] == version and status["info"]["status"] == "deployed"


# ------------------------------------------------------------------------------------ uninstall
def test_uninstall_removes_the_release_and_keeps_the_crd(release: Release) -> None:
    r = release
    r.helm("uninstall", r.name, "--wait", "--timeout", "120s")
    for kind, name in [("deployment", r.fullname), ("service", r.fullname),
                       ("serviceaccount", r.fullname),
                       ("job", f"{r.fullname}-webhook-cleanup"),
                       ("serviceaccount", f"{r.fullname}-webhook-cleanup")]:
        assert r.get(kind, name) is None, f"{kind}/{name} is left behind"
    for kind, name in [("clusterrole", r.fullname), ("clusterrolebinding", r.fullname),
                       ("clusterrole", f"{r.fullname}-webhook-cleanup"),
                       ("clusterrolebinding", f"{r.fullname}-webhook-cleanup")]:
        assert r.get(kind, name, namespaced=False) is None, f"{kind}/{name} is left behind"
    left = r.cluster.kubectl("get", "all,sa,clusterrole,clusterrolebinding", "-A", "-l",
                             f"app.kubernetes.io/instance={r.name}", "-o", "name").stdout
    assert left.strip() == "", left
    _wait(lambda: _operator_pods(r) == [], "the operator pod to go", timeout=60)
    crd = r.get("crd", CRD, namespaced=False)
    assert crd is not None and not crd["metadata"].get("deletionTimestamp"), \
        "helm uninstall must keep the CRD (and every PerfProfile)"
    assert _webhooks_pointing_at(r.cluster, r.namespace) == []
    assert r.helm("list", "-q").stdout.strip() == ""


def test_uninstall_hook_script_may_delete_the_webhook_configurations(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The pre-delete hook's script, run here (kwok runs no Job) as the hook's own
    ServiceAccount, with server-side dry run so that the suite's webhooks stay: its RBAC lets it
    delete both configurations, and nothing else."""
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"pp-{suffix}", f"e2e-helm-hook-{suffix}"
    rendered = subprocess.run(
        [cluster.binary("helm"), "template", name, str(CHART), "-n", namespace,
         "--kube-version", "1.35.0", "--show-only", "templates/webhook-cleanup.yaml"],
        capture_output=True, text=True, check=True, env=cluster.env()).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    sa = job["spec"]["template"]["spec"]["serviceAccountName"]
    rbac = [d for d in docs if d["kind"] != "Job"]
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        input="\n---\n".join(yaml.safe_dump(d) for d in rbac))
        for verb, res, ok in [
                ("delete", "mutatingwebhookconfigurations.admissionregistration.k8s.io/"
                           "perfpilot-pod-injector", True),
                ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io/"
                           "perfpilot-profile-validator", True),
                ("delete", "mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
                 False),
                ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", False)]:
            out = cluster.kubectl("auth", "can-i", verb, res,
                                  f"--as=system:serviceaccount:{namespace}:{sa}", check=False)
            assert (out.stdout.strip() == "yes") is ok, f"{verb} {res}: {out.stdout}"
        token = cluster.kubectl("create", "token", sa, "-n", namespace,
                                "--duration=10m").stdout.strip()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "local", "cluster": {
                "server": cluster.server, "certificate-authority": str(cluster.pki.ca_crt)}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}]}))
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "KUBECONFIG": str(kubeconfig),
                                              "DRY_RUN": "1"})
        assert run.returncode == 0, run.stdout + run.stderr
        for webhook in ("perfpilot-pod-injector", "perfpilot-profile-validator"):
            assert re.search(rf"^{webhook}: (deleted \(dry run\)|already absent)$", run.stdout,
                             re.M), run.stdout
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", "-l",
                        f"app.kubernetes.io/instance={name}", "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
