"""The Helm chart on the real local control plane: install, RBAC, upgrade, uninstall.

kwok reports the operator's pods Running without running them, so the release's webhook
configurations (rendered by the chart, named after the release) are limited to namespaces carrying
a label nobody has (webhook.namespaceLabels): the API server never calls them, and the suite's own
operator keeps perfpilot-pod-injector / perfpilot-profile-validator. The RBAC is proven twice:
`kubectl auth can-i --list` as the chart's ServiceAccount equals charts/perfpilot/rbac-allowlist.txt,
and the real operator process run on this machine with that ServiceAccount's token (restricted to
a namespace of its own) works without a 403 - leader Lease, the release's webhook configurations
patched by name, and a deleted one reported (it may not create it) until `helm upgrade` restores it.
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


# No namespace carries this label: the API server never calls the release's webhooks (kwok runs
# no operator to answer them), the suite's operator keeps serving every other test.
ISOLATED = 'webhook.namespaceLabels={"perfpilot.io/e2e-helm":"nobody"}'


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
                              "--set-json", ISOLATED, "--wait", "--timeout", "120s").stdout
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
    assert dep["status"].get("availableReplicas") == 2      # HA: every replica serves webhooks
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pdb = r.get("poddisruptionbudget", r.fullname)
    assert pdb is not None and pdb["spec"]["minAvailable"] == 1
    assert r.get("role", r.fullname) is not None and r.get("rolebinding", r.fullname) is not None
    # The chart renders both webhook configurations, by Service reference, without a caBundle
    # (the operator's leader patches it in; kwok runs no operator here).
    for kind, suffix in (("mutatingwebhookconfiguration", "pod-injector"),
                         ("validatingwebhookconfiguration", "profile-validator")):
        cfg = r.get(kind, f"{r.fullname}-{suffix}", namespaced=False)
        assert cfg is not None, kind
        [hook] = cfg["webhooks"]
        assert hook["clientConfig"]["service"]["namespace"] == r.namespace
        assert "caBundle" not in hook["clientConfig"]
        assert hook["namespaceSelector"]["matchLabels"] == {"perfpilot.io/e2e-helm": "nobody"}
    env = _env(dep)
    assert env["PERFPILOT_WEBHOOK_SERVICE"] == f"{r.namespace}/{r.fullname}"
    assert env["PERFPILOT_NAMESPACE"] == {"fieldRef": {"apiVersion": "v1",
                                                       "fieldPath": "metadata.namespace"}}


@pytest.mark.local_harness
def test_operator_pod_runs_on_a_kwok_node(release: Release) -> None:
    r = release
    pods = _wait(lambda: len(ready := [p for p in _operator_pods(r) if _running_ready(p)]) == 2
                 and ready, "the two operator pods Running and Ready", timeout=60)
    # Spread over the (two kwok) nodes where possible.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, [p["spec"]["nodeName"] for p in pods]
    for pod in pods:
        node = json.loads(r.cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o",
                                            "json").stdout)
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
        assert pod["spec"]["serviceAccountName"] == r.fullname
        sc = pod["spec"]["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    # kwok runs nothing: the chart's configurations exist, no operator patched a CA in.
    assert sorted(_webhooks_pointing_at(r.cluster, r.namespace)) == [
        f"mutatingwebhookconfigurations/{r.fullname}-pod-injector",
        f"validatingwebhookconfigurations/{r.fullname}-profile-validator"]


# ------------------------------------------------------------------------------------ RBAC
ALLOWED = [
    # kopf: the PerfProfile watch, its bookkeeping patches and status; Events
    ("list", "perfprofiles.perfpilot.io", "-A"),
    ("watch", "perfprofiles.perfpilot.io", "-A"),
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
    # the chart's webhook configurations, patched by name (caBundle, drift): see below
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
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses"),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("patch", "perfprofiles.perfpilot.io", "-n", "anywhere"),      # status only
    ("create", "leases.coordination.k8s.io", "-n", "anywhere"),   # only its own namespace
    ("impersonate", "serviceaccounts", "-n", "anywhere"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    # no Secret outside the release's namespace; there, only its CA Secret by name
    ("create", "secrets", "-n", "anywhere"),
    ("get", "secrets/perfpilot-operator-ca", "-n", "anywhere"),
    ("get", "secrets/someone-elses", "-n", "{release}"), ("list", "secrets", "-n", "{release}"),
    ("update", "secrets/someone-elses", "-n", "{release}"),
    ("patch", "deployments.apps", "-n", "anywhere"),       # only the scale subresource
    ("update", "deployments.apps", "--subresource=scale", "-n", "anywhere"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
]


def _in(release: Release, check: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a.replace("{release}", release.namespace) for a in check)



def _named(r: Release) -> list[tuple[str, ...]]:
    """The grants limited to the release's own objects."""
    adm = "admissionregistration.k8s.io"
    return [(v, f"mutatingwebhookconfigurations.{adm}/{r.fullname}-pod-injector") for v in
            ("get", "patch")] + \
        [(v, f"validatingwebhookconfigurations.{adm}/{r.fullname}-profile-validator") for v in
         ("get", "patch")] + \
        [(v, f"leases.coordination.k8s.io/{r.fullname}-operator", "-n", r.namespace)
         for v in ("get", "update")] + \
        [("create", "leases.coordination.k8s.io", "-n", r.namespace)]


def test_service_account_may_do_what_the_operator_does(release: Release) -> None:
    refused = [" ".join(c) for c in ALLOWED + _named(release)
               if not release.can_i(*_in(release, c))]
    # each profile's alerts as a PrometheusRule (where Prometheus Operator runs)
    refused += [f"{v} prometheusrules" for v in ("get", "create", "update", "delete")
                if not release.review(v, "monitoring.coreos.com", "prometheusrules")]
    assert refused == [], f"the chart's ServiceAccount may not: {refused}"


def test_service_account_may_not_do_more(release: Release) -> None:
    r = release
    others = [("delete", f"mutatingwebhookconfigurations.admissionregistration.k8s.io/"
                         f"{r.fullname}-pod-injector"),
              ("update", f"mutatingwebhookconfigurations.admissionregistration.k8s.io/"
                         f"{r.fullname}-pod-injector"),
              ("update", "leases.coordination.k8s.io/someone-elses", "-n", r.namespace),
              ("delete", f"leases.coordination.k8s.io/{r.fullname}-operator", "-n", r.namespace)]
    allowed = [" ".join(c) for c in DENIED + others if release.can_i(*_in(release, c))]
    allowed += [f"{v} {g}/{r}" for v, g, r in [
        ("list", "monitoring.coreos.com", "prometheusrules"),
        ("create", "monitoring.coreos.com", "servicemonitors")]
        if release.review(v, g, r)]
    assert allowed == [], f"the chart's ServiceAccount may: {allowed}"


ALLOWLIST = CHART / "rbac-allowlist.txt"


def can_i_list(r: Release, namespace: str) -> list[str]:
    """`kubectl auth can-i --list` as the ServiceAccount, one normalized line per rule, the
    release's own names replaced by placeholders (<fullname>, <namespace>)."""
    out = r.cluster.kubectl("auth", "can-i", "--list", f"--as={r.sa}", "-n", namespace).stdout
    lines = []
    for line in out.splitlines()[1:]:
        cols = re.split(r"\s{2,}", line.strip())
        if len(cols) == 3:      # no resource: the Resources column is empty
            cols = ["", *cols]
        text = " | ".join(cols)
        lines.append(text.replace(r.fullname, "<fullname>").replace(r.namespace, "<namespace>"))
    return sorted(lines)


def test_can_i_list_equals_the_checked_in_allowlist(release: Release) -> None:
    """Everything the ServiceAccount may do, in its own namespace (ClusterRole + Role) and in
    any other (ClusterRole only), as the API server answers it. A change of the chart's RBAC
    must update charts/perfpilot/rbac-allowlist.txt (PERFPILOT_UPDATE_ALLOWLIST=1 rewrites it
    from this run), so the reviewer sees the new rights."""
    actual = ["[own namespace]", *can_i_list(release, release.namespace),
              "[any other namespace]", *can_i_list(release, "default")]
    text = "\n".join(actual) + "\n"
    if os.environ.get("PERFPILOT_UPDATE_ALLOWLIST") == "1":
        ALLOWLIST.write_text(ALLOWLIST_HEADER + text)
    expected = [line for line in ALLOWLIST.read_text().splitlines()
                if line and not line.startswith("#")]
    assert actual == expected, (
        "kubectl auth can-i --list differs from charts/perfpilot/rbac-allowlist.txt:\n"
        + "\n".join(f"+ {x}" for x in actual if x not in expected)
        + "\n" + "\n".join(f"- {x}" for x in expected if x not in actual))
    flat = "\n".join(actual)
    for forbidden in ("[*]", "escalate", "impersonate", "bind"):
        assert forbidden not in flat, forbidden


ALLOWLIST_HEADER = """\
# `kubectl auth can-i --list --as=system:serviceaccount:<namespace>:<fullname> -n <ns>` of the
# chart's ServiceAccount on a real API server (e2e/test_helm.py compares them; regenerate with
# PERFPILOT_UPDATE_ALLOWLIST=1). Resources | Non-Resource URLs | Resource Names | Verbs.
# Lines without perfpilot's resources are what every authenticated user may do.
"""


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
CREATE_WEBHOOK = re.compile(r'"POST /apis/admissionregistration\.k8s\.io/v1/'
                            r'mutatingwebhookconfigurations HTTP/1\.1" 403')
CLIENT_CALL = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1.1" (\d{3})')


def test_operator_runs_under_the_charts_rbac_without_a_forbidden(
        release: Release, tmp_path: Path) -> None:
    """The real operator, authenticated as the chart's ServiceAccount, with the chart's
    environment, reconciles a profile whose pod runs without the sidecar and whose target it
    autoscales: kopf's watches, patches, status and Events, its CA Secret (in the release's
    namespace, none in the profile's) and the scale subresource - and the API server never
    answers 403."""
    log = _operator_as_service_account(release, tmp_path)
    assert ("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{release.namespace}/leases/"
            f"{release.fullname}-operator", "200") in _calls(log)


def test_sharded_operator_runs_under_the_charts_rbac_without_a_forbidden(
        release: Release, tmp_path: Path) -> None:
    """The same with sharding.enabled=true: the Role the chart renders then lets the replica
    keep its member Lease and list the group's (and nothing more: the allowlist test checks the
    default release), and the profile is reconciled by its owner."""
    r = release
    r.helm("upgrade", r.name, str(CHART), "--reuse-values", "--set", "sharding.enabled=true",
           "--wait", "--timeout", "120s")
    try:
        log = _operator_as_service_account(r, tmp_path)
    finally:
        r.helm("upgrade", r.name, str(CHART), "--reuse-values", "--set",
               "sharding.enabled=false", "--wait", "--timeout", "120s")
    calls = _calls(log)
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{r.namespace}/leases"
    assert ("GET", leases, "200") in calls, sorted(calls)      # the member LIST
    assert any(v == "PUT" and p.startswith(f"{leases}/{r.fullname}-operator-m-") and code == "200"
               for v, p, code in calls), sorted(calls)
    assert "profiles spread over 1 replica(s)" in log


def _calls(log: str) -> set[tuple[str, str, str]]:
    return {(m[1], m[2].split("?")[0], m[3]) for m in CLIENT_CALL.finditer(log)}


def _operator_as_service_account(release: Release, tmp_path: Path) -> str:
    """Run the operator as the release's ServiceAccount with the release's environment until it
    reconciled a probe profile; asserts no 403 and returns its log."""
    r, c = release, release.cluster
    work = f"{r.namespace}-w{uuid.uuid4().hex[:4]}"    # each run its own (deletion is lazy)
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
            "PERFPILOT_CERT_DIR": str(tmp_path / "certs"),
            # the Service port the chart's configurations name (this process listens elsewhere)
            "PERFPILOT_WEBHOOK_URL_PORT": env["PERFPILOT_WEBHOOK_PORT"],
            "PERFPILOT_RESYNC_INTERVAL": "1s",
        })
        assert env["PERFPILOT_REGISTER_WEBHOOKS"] == "true"      # the chart's mode
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", RUN_OPERATOR, work], cwd=ROOT, stdout=out,
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
        # Waited for: the suite's own operator reconciles the probe too (the status above may be
        # its), and a sharded replica starts acting only after its 10 s handoff.
        def exported() -> bool:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{env['PERFPILOT_METRICS_PORT']}/metrics", timeout=5) as m:
                text = m.read().decode()
            return f'perfpilot_operator_pods{{namespace="{work}",profile="rbac-probe"' in text

        _wait(exported, "this operator's series for the probe profile", timeout=45)
        _wait(lambda: f"/namespaces/{work}/deployments/probe/scale HTTP/1.1\" 200" in
              log_path.read_text(), "this operator reading the probe's scale subresource")
        _deleted_webhook_configuration_is_reported(r, log_path, env)
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
                 and not NAMESPACE_LIST.search(line)
                 # by design: it may not re-create the deleted webhook configuration
                 and not CREATE_WEBHOOK.search(line)]
    assert forbidden == [], "\n".join(forbidden[:20])
    calls = _calls(log)
    assert ("GET", f"/apis/apps/v1/namespaces/{work}/deployments/probe/scale", "200") in calls, \
        sorted(calls)
    secrets = {(v, p) for v, p, code in calls if "/secrets" in p}
    assert secrets <= {("GET", f"/api/v1/namespaces/{r.namespace}/secrets/perfpilot-operator-ca"),
                       ("POST", f"/api/v1/namespaces/{r.namespace}/secrets"),
                       ("PUT", f"/api/v1/namespaces/{r.namespace}/secrets/perfpilot-operator-ca")}, \
        sorted(calls)
    assert ("GET", f"/api/v1/namespaces/{r.namespace}/secrets/perfpilot-operator-ca") in secrets
    assert re.search(r"is now the leader \(lease " + re.escape(r.namespace), log), log[-3000:]
    assert ("PATCH", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
            f"{r.fullname}-pod-injector", "200") in calls, sorted(calls)
    return log


def _metric(port: str, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as m:
        text = m.read().decode()
    found = re.search(rf'^perfpilot_operator_webhook_configuration_present\{{name="{name}"\}} '
                      rf"(\S+)$", text, re.M)
    return float(found[1]) if found else None


def _deleted_webhook_configuration_is_reported(r: Release, log_path: Path,
                                               env: dict[str, str]) -> None:
    """The chart's mode: the operator patched the CA into the release's pod webhook; edited, it
    is patched back; deleted,
    it may not re-create it (403 on create, by design): an ERROR naming `helm upgrade`, a
    Warning Event on the Lease, the metric at 0 - then `helm upgrade` restores it and the
    operator patches its CA in again."""
    c, name = r.cluster, f"{r.fullname}-pod-injector"
    port = env["PERFPILOT_METRICS_PORT"]
    _wait(lambda: "caBundle" in json.loads(c.kubectl(
        "get", "mutatingwebhookconfiguration", name, "-o", "json").stdout)["webhooks"][0][
        "clientConfig"], "the operator's CA patched into the chart's configuration", 30)
    # Changed behind its back: patched back, by name (get + patch are all it may do).
    c.kubectl("patch", "mutatingwebhookconfiguration", name, "--type=json", "-p",
              '[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]')
    t_edit = time.monotonic()
    _wait(lambda: json.loads(c.kubectl("get", "mutatingwebhookconfiguration", name, "-o",
                                       "json").stdout)["webhooks"][0]["failurePolicy"] == "Fail",
          "failurePolicy patched back under the chart's RBAC", 30)
    edited = time.monotonic() - t_edit

    def missing_events() -> list[dict[str, Any]]:
        return list(json.loads(c.kubectl(
            "get", "events", "-n", r.namespace, "--field-selector",
            "reason=WebhookConfigurationMissing", "-o", "json").stdout)["items"])

    earlier = {e["metadata"]["uid"] for e in missing_events()}   # an earlier run's (sharded)
    c.kubectl("delete", "mutatingwebhookconfiguration", name)
    t0 = time.monotonic()
    _wait(lambda: _metric(port, name) == 0, "perfpilot_operator_webhook_configuration_present 0",
          30)
    reported = time.monotonic() - t0
    _wait(lambda: "helm upgrade --install" in log_path.read_text(), "the ERROR naming the fix", 10)
    events = [e for e in missing_events() if e["metadata"]["uid"] not in earlier]
    assert [e["involvedObject"]["kind"] for e in events] == ["Lease"], events
    assert name in events[0]["message"] and events[0]["type"] == "Warning"
    assert c.kubectl("get", "mutatingwebhookconfiguration", name, check=False).returncode != 0
    r.helm("upgrade", r.name, str(CHART), "--reuse-values", "--wait", "--timeout", "120s")
    t1 = time.monotonic()
    _wait(lambda: _metric(port, name) == 1 and "caBundle" in json.loads(c.kubectl(
        "get", "mutatingwebhookconfiguration", name, "-o", "json").stdout)["webhooks"][0][
        "clientConfig"], "the restored configuration with the operator's CA", 30)
    print(f"\n[helm] chart mode: edited failurePolicy patched back after {edited:.1f}s; "
          f"deleted webhook configuration reported after {reported:.1f}s; "
          f"after `helm upgrade` its caBundle patched in after {time.monotonic() - t1:.1f}s")


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
    # RollingUpdate: both pods replaced, each carrying the new environment.
    pods = _wait(lambda: len(new := [p for p in _operator_pods(r) if _running_ready(p)
                                     and p["metadata"]["uid"] not in old_pods]) == 2 and new,
                 "the two new operator pods")
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["PERFPILOT_RESYNC_INTERVAL"] == "30s"
    status = json.loads(r.helm("status", r.name, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"


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
                       ("serviceaccount", r.fullname), ("role", r.fullname),
                       ("rolebinding", r.fullname), ("poddisruptionbudget", r.fullname)]:
        assert r.get(kind, name) is None, f"{kind}/{name} is left behind"
    for kind, name in [("clusterrole", r.fullname), ("clusterrolebinding", r.fullname),
                       ("mutatingwebhookconfiguration", f"{r.fullname}-pod-injector"),
                       ("validatingwebhookconfiguration", f"{r.fullname}-profile-validator")]:
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
