"""Static checks of charts/perfpilot with the real helm binary (no cluster).

`helm lint --strict`, what `helm template` renders, that values.schema.json refuses bad values
naming the field, that the ClusterRole grants exactly what the operator's code calls (derived here
from kopf's registry of the operator's handlers and from the Kubernetes client calls in
operator/perfpilot_operator/), and that every PERFPILOT_* variable the chart sets is one that
settings.py reads. The chart on a real API server: e2e/test_helm.py.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "perfpilot"
OPERATOR = ROOT / "operator" / "perfpilot_operator"
HELM = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot")) / "bin" / "helm"
KUBE_VERSION = "1.35.0"   # the local control plane's version (e2e/build-control-plane.sh)
PODMONITOR_API = "monitoring.coreos.com/v1/PodMonitor"
MONITORING = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule",
              PODMONITOR_API)

pytestmark = pytest.mark.skipif(
    not HELM.exists(),
    reason=f"{HELM} is missing: `make cluster-build` builds it (`make test` does so first)")


# ------------------------------------------------------------------------------------ helpers
def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/perfpilot-helm-cache"})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(*sets: str, api_versions: Iterable[str] = (), namespace: str = "perfpilot-system",
           check: bool = True, release: str = "pp") -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    for a in api_versions:
        args += ["--api-versions", a]
    return [d for d in yaml.safe_load_all(helm(*args, check=check).stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, component: str = "operator") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} ({component}), got {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [c] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    """The chart rendered with its default values (in a fixture, so the module's skip applies
    when helm is missing instead of the import failing)."""
    return render()


# ------------------------------------------------------------------------------------ lint
def test_lint_strict_passes() -> None:
    out = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    assert "0 chart(s) failed" in out.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0" and chart["appVersion"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["description"]
    old = helm("template", "pp", str(CHART), "--kube-version", "1.28.0", check=False)
    assert old.returncode != 0 and "kubeVersion" in old.stderr


def test_chart_ships_the_crd_unchanged() -> None:
    """crds/ is installed first by Helm; it must be the repository's CRD, byte for byte
    (resync: cp crds/perfprofile.yaml charts/perfpilot/crds/)."""
    shipped = helm("show", "crds", str(CHART)).stdout
    assert yaml.safe_load(shipped) == yaml.safe_load((ROOT / "crds" / "perfprofile.yaml").read_text())
    assert list((CHART / "crds").iterdir()) == [CHART / "crds" / "perfprofile.yaml"]


# ------------------------------------------------------------------------------------ kinds
def test_default_render_has_the_expected_objects(default: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["labels"]["app.kubernetes.io/component"])
                   for d in default)
    assert kinds == sorted([
        ("ServiceAccount", "operator"), ("ClusterRole", "operator"),
        ("ClusterRoleBinding", "operator"), ("Service", "operator"), ("Deployment", "operator"),
        # the leader Lease's rights, in the release's namespace only
        ("Role", "operator"), ("RoleBinding", "operator"),
        # 2 replicas by default: drains keep one serving the webhooks
        ("PodDisruptionBudget", "operator"),
        # rendered by the chart; the operator only patches them (caBundle, drift)
        ("MutatingWebhookConfiguration", "webhooks"), ("ValidatingWebhookConfiguration", "webhooks"),
        # the CA Secret of the operator's own namespace (role-ca.yaml)
        ("Role", "operator-ca"), ("RoleBinding", "operator-ca"),
        # one per Grafana dashboard in charts/perfpilot/dashboards/
        ("ConfigMap", "dashboards"), ("ConfigMap", "dashboards"),
    ])
    for d in default:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                             "ValidatingWebhookConfiguration"):
            assert d["metadata"]["namespace"] == "perfpilot-system", d["kind"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "perfpilot"


def test_deployment_defaults(default: list[dict[str, Any]]) -> None:
    dep = one(default, "Deployment")
    # Every replica serves the webhooks, one leads; an upgrade never leaves none (surge first).
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxUnavailable": 0, "maxSurge": 1}}
    pod = dep["spec"]["template"]["spec"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert pod["affinity"] == {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": selector}}}]}}
    pdb = one(default, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    env = env_of(operator_container(default))
    assert env["PERFPILOT_LEADER_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PERFPILOT_LEADER_ELECTION"] == "true"
    assert env["PERFPILOT_LEADER_LEASE"] == "pp-perfpilot-operator"
    assert pod["serviceAccountName"] == one(default, "ServiceAccount")["metadata"]["name"]
    c = operator_container(default)
    assert c["image"] == "perfpilot/operator:0.1.0"
    assert c["command"] == ["perfpilot-operator"] and c["args"] == ["--log-format=json", "--log-level=info"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    crb = one(default, "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == one(default, "ClusterRole")["metadata"]["name"]
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                "namespace": "perfpilot-system"}]


def test_one_replica_has_no_pdb_and_spreading_can_be_off() -> None:
    """minAvailable 1 over one replica would block every drain of its node."""
    docs = render("replicas=1", "spreadAcrossNodes=false")
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert "affinity" not in one(docs, "Deployment")["spec"]["template"]["spec"]
    mine = render("affinity.nodeAffinity.x=y")      # the user's affinity replaces the default
    assert one(mine, "Deployment")["spec"]["template"]["spec"]["affinity"] == {
        "nodeAffinity": {"x": "y"}}
    assert not [d for d in render("podDisruptionBudget.enabled=false")
                if d["kind"] == "PodDisruptionBudget"]


def test_monitoring_objects_need_the_values_and_the_api(default: list[dict[str, Any]]) -> None:
    def kinds(docs: list[dict[str, Any]]) -> set[str]:
        return {d["kind"] for d in docs} & {"ServiceMonitor", "PrometheusRule"}

    on = ("metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    assert kinds(default) == set()
    assert kinds(render(api_versions=MONITORING)) == set()          # API present, values off
    assert kinds(render(*on)) == set()                              # values on, API absent
    docs = render(*on, "metrics.serviceMonitor.labels.release=prom", api_versions=MONITORING)
    assert kinds(docs) == {"ServiceMonitor", "PrometheusRule"}
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # perfpilot_operator_* carry the profile's namespace label, which must win over the target's.
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    # A profile's own alerts are not here: the operator renders a PrometheusRule per profile.
    assert set(alerts) == {"PerfPilotOperatorDown", "PerfPilotPodsWithoutSidecar"}
    # Prometheus templates survive Helm's templating verbatim.
    assert "{{ $labels.profile }}" in alerts["PerfPilotPodsWithoutSidecar"]["annotations"][
        "summary"]
    assert f'job="{svc["metadata"]["name"]}"' in alerts["PerfPilotOperatorDown"]["expr"]
    # absent() returns a series without labels: the rule carries namespace and job itself.
    assert alerts["PerfPilotOperatorDown"]["labels"] == {
        "severity": "critical", "namespace": "perfpilot-system", "job": svc["metadata"]["name"]}
    # Without the ServiceMonitor nothing scrapes that job: the down alert would fire forever.
    rules_only = render("prometheusRule.enabled=true", api_versions=MONITORING)
    assert {r["alert"] for g in one(rules_only, "PrometheusRule")["spec"]["groups"]
            for r in g["rules"]} == {"PerfPilotPodsWithoutSidecar"}
    # The metric the coverage rule reads is the operator's own (perfpilot_operator/metrics.py).
    assert '"perfpilot_operator_pods"' in (OPERATOR / "metrics.py").read_text()
    assert 'perfpilot_operator_pods{state="uninjected"}' in \
        alerts["PerfPilotPodsWithoutSidecar"]["expr"]


# ------------------------------------------------------------------------------------ PodMonitor
POD_MONITOR_ON = "sidecarMetrics.podMonitor.enabled=true"


def pod_monitors(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "PodMonitor"]


def sidecar_pod_monitor(*sets: str) -> dict[str, Any]:
    [pm] = pod_monitors(render(POD_MONITOR_ON, *sets, api_versions=[PODMONITOR_API]))
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    return pm


def test_sidecar_podmonitor_needs_the_value_and_the_api(default: list[dict[str, Any]]) -> None:
    assert pod_monitors(default) == []
    assert pod_monitors(render(api_versions=MONITORING)) == []           # API present, value off
    assert pod_monitors(render(POD_MONITOR_ON)) == []                    # value on, API absent
    assert pod_monitors(render(POD_MONITOR_ON, api_versions=[           # other monitoring APIs
        "monitoring.coreos.com/v1/ServiceMonitor"])) == []
    # The operator's ServiceMonitor is independent of it.
    docs = render(POD_MONITOR_ON, api_versions=MONITORING)
    assert len(pod_monitors(docs)) == 1
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]


def test_sidecar_podmonitor_defaults() -> None:
    pm = sidecar_pod_monitor()
    meta = pm["metadata"]
    assert meta["name"] == "pp-perfpilot-sidecars"
    assert meta["namespace"] == "perfpilot-system"
    assert meta["labels"]["app.kubernetes.io/component"] == "sidecar-metrics"
    assert meta["labels"]["app.kubernetes.io/part-of"] == "perfpilot"
    spec = pm["spec"]
    # Injected pods live in the workloads' namespaces, never in the release's.
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"] == {"matchExpressions": [
        {"key": "perfpilot.io/profile", "operator": "Exists"}]}
    [ep] = spec["podMetricsEndpoints"]
    assert ep == {"port": "pp-metrics", "path": "/metrics", "interval": "15s",
                  "scrapeTimeout": "10s"}


def test_sidecar_podmonitor_values() -> None:
    pm = sidecar_pod_monitor("sidecarMetrics.podMonitor.interval=30s",
                             "sidecarMetrics.podMonitor.scrapeTimeout=5s",
                             "sidecarMetrics.podMonitor.labels.release=prom",
                             "sidecarMetrics.podMonitor.labels.team=perf")
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["metadata"]["labels"]["team"] == "perf"
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert (ep["interval"], ep["scrapeTimeout"]) == ("30s", "5s")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    # matchNames restricts the namespaces; next to any: true the Prometheus Operator would
    # ignore it, so the chart renders it alone.
    pm = sidecar_pod_monitor("sidecarMetrics.podMonitor.namespaceSelector.matchNames={team-a,team-b}")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    # Neither: the PodMonitor would watch only the release's namespace, which the pod webhook
    # never sees (no injected pod can be there): refused, naming the value.
    proc = helm("template", "pp", str(CHART), "--kube-version", KUBE_VERSION,
                "--api-versions", PODMONITOR_API, "--set", POD_MONITOR_ON,
                "--set", "sidecarMetrics.podMonitor.namespaceSelector.any=false", check=False)
    assert proc.returncode != 0
    assert "sidecarMetrics.podMonitor.namespaceSelector" in proc.stderr, proc.stderr


def test_docs_point_to_the_podmonitor_value_and_agree_with_it() -> None:
    """docs/dashboards.md names the value, and its hand-written PodMonitor (for installs without
    the chart) selects the same pods and port as the chart's."""
    docs = (ROOT / "docs" / "dashboards.md").read_text()
    assert "`sidecarMetrics.podMonitor.enabled`" in docs
    assert docs.index("sidecarMetrics.podMonitor.enabled") < docs.index("kind: PodMonitor")
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "kind: PodMonitor" in b]
    by_hand = yaml.safe_load(block)["spec"]
    chart = sidecar_pod_monitor()["spec"]
    assert by_hand["selector"] == chart["selector"]
    assert by_hand["namespaceSelector"] == chart["namespaceSelector"]
    [hand_ep], [chart_ep] = by_hand["podMetricsEndpoints"], chart["podMetricsEndpoints"]
    assert (hand_ep["port"], hand_ep["path"]) == (chart_ep["port"], chart_ep["path"])


def test_sidecar_podmonitor_selects_what_the_webhook_injects(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The selector label and the port name come from the operator's injection code: the
    operator is configured from the chart's own environment (settings.py), injects a pod, and
    the PodMonitor must select that pod and name the port that serves the sidecar's /metrics."""
    from perfpilot_operator.logic.injection import (LABEL_PROFILE, OPT_IN_LABEL, SIDECAR_NAME,
                                                    inject, selector_matches)
    from perfpilot_operator.settings import Settings

    sets = ("sidecar.metricsPort=9500",)   # the PodMonitor names the port, not the number
    docs = render(POD_MONITOR_ON, *sets, api_versions=[PODMONITOR_API])
    [pm] = pod_monitors(docs)
    [ep] = pm["spec"]["podMetricsEndpoints"]
    for name, value in env_of(operator_container(docs)).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    tmpl = Settings.from_env().sidecar
    assert tmpl.metrics_port == 9500

    labels = {"app": "agent", OPT_IN_LABEL: "true"}
    pod = {"metadata": {"name": "agent-0", "namespace": "team-a", "labels": dict(labels)},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    profile = {"metadata": {"name": "agents", "namespace": "team-a", "generation": 3},
               "spec": {"selector": {"matchLabels": {"app": "agent"}}}}
    selector = pm["spec"]["selector"]
    # An opted-in pod the webhook did not inject (no profile selects it) has no sidecar to scrape.
    assert not selector_matches(selector, labels)
    for native in (True, False):
        changes = inject(pod, profile, replace(tmpl, native_sidecar=native)).changes
        injected = {**labels, **changes["metadata.labels"]}
        assert LABEL_PROFILE in changes["metadata.labels"]
        assert selector_matches(selector, injected)
        [sidecar] = [c for c in changes["spec.initContainers" if native else "spec.containers"]
                     if c["name"] == SIDECAR_NAME]
        [port] = [p for p in sidecar["ports"] if p["containerPort"] == tmpl.metrics_port]
        assert ep["port"] == port["name"]
        # ... and that port is where the sidecar serves /metrics.
        env = {e["name"]: e.get("value") for e in sidecar["env"]}
        assert env["PERFPILOT_METRICS_PORT"] == str(port["containerPort"])
    assert ep["path"] == "/metrics"
    # The operator's own pod is not a target.
    operator_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selector_matches(selector, operator_labels)


def test_sidecar_podmonitor_keeps_the_labels_the_sidecars_dashboard_uses() -> None:
    """The Sidecars dashboard selects on the target labels namespace and pod, which a
    PodMonitor adds to every series by default; nothing here may rename or drop them, and
    honorLabels stays off so that the target's namespace and pod win."""
    def strings(node: Any) -> Iterable[str]:
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    dash = json.loads((CHART / "dashboards" / "perfpilot-sidecars.json").read_text())
    text = "\n".join(strings(dash))
    used = set(re.findall(r'(\w+)=~"\$\w+"', text))                    # {namespace=~"$namespace"}
    used |= set(re.findall(r"label_values\([^,]+, (\w+)\)", text))       # the variables' queries
    assert used == {"namespace", "pod"}, used
    # What the Prometheus Operator's PodMonitor adds to each target (besides instance).
    pod_monitor_target_labels = {"namespace", "pod", "container", "endpoint", "job"}
    assert used <= pod_monitor_target_labels
    [ep] = sidecar_pod_monitor()["spec"]["podMetricsEndpoints"]
    assert not ep.get("honorLabels")
    # The sidecar's own series carry none of the target labels (honorLabels would not matter).
    from perfpilot_agent.metrics.definitions import METRICS

    assert not {label for _kind, labels, _help in METRICS.values() for label in labels} \
        & pod_monitor_target_labels
    assert "relabelings" not in ep and "metricRelabelings" not in ep


# ------------------------------------------------------------------------------------ dashboards
DASHBOARD_FILES = sorted((CHART / "dashboards").glob("*.json"))


def dashboard_maps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "ConfigMap"
            and d["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"]


def test_each_dashboard_is_a_configmap_grafanas_sidecar_loads(default: list[dict[str, Any]]) -> None:
    """One ConfigMap per committed JSON file (make dashboards), labelled grafana_dashboard: "1",
    holding the file unchanged under its own name (the file name Grafana's sidecar writes)."""
    assert len(DASHBOARD_FILES) == 2, DASHBOARD_FILES
    maps = dashboard_maps(default)
    assert len(maps) == len(DASHBOARD_FILES)
    by_key = {}
    for cm in maps:
        meta = cm["metadata"]
        assert meta["labels"]["grafana_dashboard"] == "1"
        assert meta["namespace"] == "perfpilot-system"
        assert "annotations" not in meta
        [(key, text)] = cm["data"].items()
        by_key[key] = text
        assert meta["name"].startswith("pp-perfpilot-dashboard-") and len(meta["name"]) <= 63
    assert len({cm["metadata"]["name"] for cm in maps}) == len(maps)
    assert sorted(by_key) == [p.name for p in DASHBOARD_FILES]
    for path in DASHBOARD_FILES:
        shipped = json.loads(by_key[path.name])
        assert shipped == json.loads(path.read_text())
        assert shipped["uid"] and shipped["title"].startswith("perfpilot / ")
        # A ConfigMap holds at most 1 MiB; leave room for growth and Helm's release record.
        assert len(by_key[path.name].encode()) < 512 * 1024, path.name


def test_dashboard_values() -> None:
    docs = render("grafanaDashboards.labels.release=prom",
                  "grafanaDashboards.annotations.grafana_folder=perfpilot",
                  "grafanaDashboards.namespace=monitoring")
    maps = dashboard_maps(docs)
    assert len(maps) == len(DASHBOARD_FILES)
    for cm in maps:
        meta = cm["metadata"]
        assert meta["namespace"] == "monitoring"
        assert meta["labels"]["grafana_dashboard"] == "1" and meta["labels"]["release"] == "prom"
        assert meta["annotations"] == {"grafana_folder": "perfpilot"}
    # Everything else stays in the release's namespace.
    assert one(docs, "Deployment")["metadata"]["namespace"] == "perfpilot-system"
    # Another sidecar label value (sidecar.dashboards.labelValue), or none of perfpilot's.
    relabelled = dashboard_maps(render("grafanaDashboards.labels.grafana_dashboard=perfpilot"))
    assert {cm["metadata"]["labels"]["grafana_dashboard"] for cm in relabelled} == {"perfpilot"}
    assert dashboard_maps(render("grafanaDashboards.enabled=false")) == []


# ------------------------------------------------------------------------------------ schema
@pytest.mark.parametrize("value, field", [
    ("replicas=abc", "replicas"),
    ("replicas=-1", "replicas"),
    ("webhook.namespaceLabels.team=1", "team"),     # label values are strings
    ("webhook.port=70000", "port"),
    ("webhook.failurePolicy=Sometimes", "failurePolicy"),
    ("resyncInterval=soon", "resyncInterval"),
    ("logLevel=loud", "logLevel"),
    ("sidecar.native=maybe", "native"),
    ("replica=1", "replica"),                        # a typo is not silently ignored
    ("grafanaDashboards.enabled=maybe", "enabled"),
    ("grafanaDashboards.namespace=Monitoring_NS", "namespace"),
    ("sidecarMetrics.podMonitor.enabled=maybe", "enabled"),
    ("sidecarMetrics.podMonitor.interval=1.5s", "interval"),        # no fractions in Prometheus
    ("sidecarMetrics.podMonitor.scrapeTimeout=soon", "scrapeTimeout"),
    ("sidecarMetrics.podMonitor.namespaceSelector.matchNames[0]=Team_A", "matchNames"),
    ("sidecarMetrics.podMonitor.namespaceSelector.all=true", "all"),
    ("sidecarMetrics.podMonitors.enabled=true", "podMonitors"),
])
def test_schema_rejects_bad_values_naming_the_field(value: str, field: str) -> None:
    proc = helm("template", "pp", str(CHART), "--kube-version", KUBE_VERSION, "--set", value,
                check=False)
    assert proc.returncode != 0, f"--set {value} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert field in proc.stderr, proc.stderr


def test_schema_accepts_the_documented_knobs() -> None:
    docs = render("replicas=0", "image.tag=0.2.0", "sidecar.image.tag=7", "logLevel=debug",
                  "logFormat=plain", "resyncInterval=1m30s", "rpcTimeout=500ms",
                  "webhook.failurePolicy=Ignore", "sidecar.native=false",
                  "nodeSelector.disk=ssd", "tolerations[0].operator=Exists",
                  "extraEnv[0].name=EXTRA", "extraEnv[0].value=one")
    c = operator_container(docs)
    assert c["args"] == ["--log-format=plain", "--log-level=debug"]
    env = env_of(c)
    assert env["PERFPILOT_SIDECAR_IMAGE"] == "perfpilot/sidecar:7"
    assert env["PERFPILOT_RESYNC_INTERVAL"] == "1m30s"
    assert env["EXTRA"] == "one"
    assert env["PERFPILOT_NATIVE_SIDECAR"] == "false"
    assert c["image"] == "perfpilot/operator:0.2.0"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["tolerations"] == [{"operator": "Exists"}]


# ------------------------------------------------------------------------------------ env
def settings_env_names() -> set[str]:
    return set(re.findall(r'"(PERFPILOT_[A-Z0-9_]+)"', (OPERATOR / "settings.py").read_text()))


def test_every_rendered_operator_variable_is_read_by_settings(default: list[dict[str, Any]]) -> None:
    known = settings_env_names()
    assert len(known) >= 15, known   # the parse found settings.py's variables
    rendered = {n for n in env_of(operator_container(default)) if n.startswith("PERFPILOT_")}
    assert rendered - known == set(), f"the chart sets variables settings.py never reads: " \
        f"{sorted(rendered - known)}"
    # Everything the chart decides in-cluster is set explicitly, not left to out-of-cluster defaults.
    assert {"PERFPILOT_NAMESPACE", "PERFPILOT_WEBHOOK_HOST", "PERFPILOT_WEBHOOK_PORT",
            "PERFPILOT_WEBHOOK_SERVICE", "PERFPILOT_CERT_DIR", "PERFPILOT_HEALTH_HOST",
            "PERFPILOT_HEALTH_PORT", "PERFPILOT_METRICS_HOST", "PERFPILOT_METRICS_PORT",
            "PERFPILOT_RESYNC_INTERVAL",
            "PERFPILOT_SIDECAR_IMAGE"} <= rendered


def test_values_reach_the_operator_environment() -> None:
    env = env_of(operator_container(render(
        "webhook.port=10443", "metrics.port=9090", "health.port=9091", "resyncInterval=30s",
        "rolloutConcurrency=8", "rpcTimeout=3s", "sidecar.grpcPort=6000",
        "sidecar.metricsPort=6001", "sidecar.image.repository=r/s", "sidecar.native=true",
        namespace="ops")))
    assert env["PERFPILOT_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["PERFPILOT_WEBHOOK_PORT"] == "10443"
    assert env["PERFPILOT_METRICS_PORT"] == "9090"
    assert env["PERFPILOT_HEALTH_PORT"] == "9091"
    assert env["PERFPILOT_RESYNC_INTERVAL"] == "30s"
    assert env["PERFPILOT_ROLLOUT_CONCURRENCY"] == "8"
    assert env["PERFPILOT_RPC_TIMEOUT"] == "3s"
    assert env["PERFPILOT_SIDECAR_PORT"] == "6000"
    assert env["PERFPILOT_SIDECAR_METRICS_PORT"] == "6001"
    assert env["PERFPILOT_SIDECAR_IMAGE"] == "r/s:0.1.0"
    assert "PERFPILOT_SIDECAR_PULL_POLICY" not in env     # the API server's default
    assert env["PERFPILOT_NATIVE_SIDECAR"] == "true"
    assert env["PERFPILOT_WEBHOOK_SERVICE"] == "ops/pp-perfpilot"


def test_loaded_images_without_a_registry() -> None:
    """What `make e2e-cluster` and the real-node e2e pass: local images, never pulled."""
    docs = render("image.repository=localhost/perfpilot/operator", "image.tag=abc123",
                  "image.pullPolicy=Never", "sidecar.image.repository=localhost/perfpilot/sidecar",
                  "sidecar.image.tag=def456", "sidecar.image.pullPolicy=Never")
    c = operator_container(docs)
    assert c["image"] == "localhost/perfpilot/operator:abc123"
    assert c["imagePullPolicy"] == "Never"
    env = env_of(c)
    assert env["PERFPILOT_SIDECAR_IMAGE"] == "localhost/perfpilot/sidecar:def456"
    assert env["PERFPILOT_SIDECAR_PULL_POLICY"] == "Never"


def test_webhooks_are_registered_by_the_charts_service(default: list[dict[str, Any]]) -> None:
    """settings.py: a non-empty PERFPILOT_WEBHOOK_SERVICE ('namespace/name') registers the
    webhooks by Service reference with port PERFPILOT_WEBHOOK_PORT; the Service must exist under
    that name and serve that port number, and the pod must listen on it on all interfaces."""
    from perfpilot_operator.logic.webhooks import client_config

    env = env_of(operator_container(default))
    svc = one(default, "Service")
    ns, name = env["PERFPILOT_WEBHOOK_SERVICE"].split("/")
    assert (ns, name) == (svc["metadata"]["namespace"], svc["metadata"]["name"])
    port = int(env["PERFPILOT_WEBHOOK_PORT"])
    cfg = client_config(path="inject-sidecar", ca_bundle=b"x", port=port,
                        service=env["PERFPILOT_WEBHOOK_SERVICE"])
    assert cfg["service"] == {"namespace": ns, "name": name, "path": "/inject-sidecar",
                              "port": port}
    [webhook_port] = [p for p in svc["spec"]["ports"] if p["name"] == "webhook"]
    assert webhook_port["port"] == port and webhook_port["targetPort"] == "webhook"
    c = operator_container(default)
    assert {"name": "webhook", "containerPort": port, "protocol": "TCP"} in c["ports"]
    assert env["PERFPILOT_WEBHOOK_HOST"] == "0.0.0.0"


def test_probes_use_kopfs_health_endpoint(default: list[dict[str, Any]]) -> None:
    main = (OPERATOR / "__main__.py").read_text()
    assert "/healthz" in main and "settings.health_port" in main
    c = operator_container(default)
    env = env_of(c)
    health = int(env["PERFPILOT_HEALTH_PORT"])
    assert {"name": "health", "containerPort": health, "protocol": "TCP"} in c["ports"]
    assert env["PERFPILOT_HEALTH_HOST"] == "0.0.0.0"   # the kubelet probes the pod IP
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready when the webhook server listens (what the Service routes to), not the liveness probe
    # again (kube-score: container-probes-identical, tests/peers/test_kube_score.py).
    assert c["readinessProbe"]["tcpSocket"] == {"port": "webhook"}


# ------------------------------------------------------------------------------------ security
def test_security_context_defaults(default: list[dict[str, Any]]) -> None:
    pod = one(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in (operator_container(default),):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_read_only_root_has_writable_cert_dir_and_tmp(default: list[dict[str, Any]]) -> None:
    """The operator writes its generated webhook CA, cert and key to PERFPILOT_CERT_DIR."""
    c = operator_container(default)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in one(default, "Deployment")["spec"]["template"]["spec"]
               ["volumes"]}
    cert_dir = env_of(c)["PERFPILOT_CERT_DIR"]
    assert cert_dir in mounts and "/tmp" in mounts
    assert volumes[mounts[cert_dir]]["emptyDir"]["medium"] == "Memory"   # the key stays in RAM
    assert "emptyDir" in volumes[mounts["/tmp"]]


# ------------------------------------------------------------------------------------ RBAC
Need = tuple[str, str, str]            # (apiGroup, resource, verb)

CLIENT_VERBS = {"read": "get", "get": "get", "list": "list", "create": "create", "replace": "update",
                "patch": "patch", "delete": "delete"}
# resource -> API group, for the resources the operator's client calls name.
CORE = {"secrets", "pods", "events", "configmaps", "namespaces", "services", "pods/resize"}
ADMISSION = {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"}
COORDINATION = {"leases"}
# Calls the code makes that the chart deliberately does not grant: create of webhook
# configurations is for the local mode (admin credentials, registration by URL); under the
# chart's RBAC it gets 403 and the deletion is reported instead (webhook_keeper.py).
NOT_GRANTED: set[tuple[str, str, str]] = {
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "create"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "create")}
# Granted by the Role in the release's namespace, not cluster-wide.
NAMESPACED_ONLY = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
# Only with sharding.enabled=true (shards.MemberLeases), in the same Role.
SHARDING_ONLY = {("coordination.k8s.io", "leases", v) for v in ("list", "delete")}
APPS = {"deployments"}
# Granted only when a value turns the feature on (value -> what it adds).
OPTIONAL_NEEDS = {"recreateUninjected.enabled=true": {("apps", "deployments", "patch")}}


def _plural(snake: str) -> str:
    word = snake.replace("_", "")
    return word if word.endswith("s") else word + "s"


def kopf_needs() -> set[Need]:
    """What kopf itself calls for the operator's handlers, read from kopf's registry."""
    import kopf

    import perfpilot_operator.handlers  # noqa: F401 - registers the handlers

    main = (OPERATOR / "__main__.py").read_text()
    # Cluster-wide (no namespace list/watch) and standalone (no peering objects).
    assert "clusterwide=True" in main
    assert re.search(r"standalone=True", main) and "--standalone" not in main
    crd = yaml.safe_load((ROOT / "crds" / "perfprofile.yaml").read_text())
    with_status = {crd["spec"]["names"]["plural"]} if any(
        "status" in v.get("subresources", {}) for v in crd["spec"]["versions"]) else set()

    reg = kopf.get_default_registry()
    needs: set[Need] = {("", "events", "create"),                               # posting
                        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                        ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
    watched = [h.selector for h in reg._indexing.get_all_handlers()]             # noqa: SLF001
    watched += [h.selector for h in reg._watching.get_all_handlers()]            # noqa: SLF001
    patched = [h.selector for h in reg._changing.get_all_handlers()]             # noqa: SLF001
    patched += [h.selector for h in reg._spawning.get_all_handlers()]            # noqa: SLF001
    for sel in watched + patched:
        res = sel.plural or sel.any_name
        needs |= {(sel.group or "", res, "list"), (sel.group or "", res, "watch")}
    for sel in patched:   # finalizers, progress/diff-base annotations, status
        res = sel.plural or sel.any_name
        needs.add((sel.group or "", res, "patch"))
        if res in with_status:
            needs.add((sel.group or "", f"{res}/status", "patch"))
    # Admission handlers need nothing: the API server calls the operator.
    return needs


def kubernetes_api_methods() -> set[str]:
    """Method names of the official client's API classes the operator constructs
    (client.CoreV1Api(...), client.AppsV1Api(...), ...)."""
    import kubernetes.client

    source = "\n".join(p.read_text() for p in OPERATOR.rglob("*.py"))
    classes = set(re.findall(r"\bclient\.(\w+Api)\(", source))
    assert "CoreV1Api" in classes, classes
    return {name for cls in classes for name in dir(getattr(kubernetes.client, cls))
            if not name.startswith("_")}


def _call_args(call: ast.Call, scope: ast.AST) -> list[ast.expr]:
    """The call's positional arguments, with `*name` expanded when `name = (a, b, ...)` is
    assigned in the enclosing function."""
    tuples = {n.targets[0].id: n.value.elts for n in ast.walk(scope)
              if isinstance(n, ast.Assign) and len(n.targets) == 1
              and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Tuple)}
    out: list[ast.expr] = []
    for a in call.args:
        if isinstance(a, ast.Starred) and isinstance(a.value, ast.Name) \
                and a.value.id in tuples:
            out += tuples[a.value.id]
        else:
            out.append(a)
    return out


def client_needs() -> set[Need]:
    """What operator/perfpilot_operator/ calls through the official Kubernetes client."""
    needs: set[Need] = set()
    api_methods = kubernetes_api_methods()
    method = re.compile(r"^(read|list|create|replace|patch|delete)_(namespaced_)?(\w+?)"
                        r"(_status|_scale|_resize|_eviction|_ephemeralcontainers)?"
                        r"(_for_all_namespaces)?$")
    custom = re.compile(r"^(get|list|create|replace|patch|delete)_(namespaced_|cluster_)?"
                        r"custom_object(_status)?$")
    for path in sorted(OPERATOR.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in api_methods and \
                    (m := method.match(node.attr)):
                verb, what, sub = CLIENT_VERBS[m[1]], m[3], (m[4] or "").lstrip("_")
                if what in ("custom_object", "cluster_custom_object"):
                    continue   # resolved from the call's arguments below
                res = _plural(what) + (f"/{sub}" if sub else "")
                group = "" if res in CORE else "admissionregistration.k8s.io" \
                    if res in ADMISSION else "coordination.k8s.io" if res in COORDINATION \
                    else "apps" if res in APPS else None
                assert group is not None, (
                    f"{path.name}: {node.attr} calls an API this test does not know; add its "
                    f"group here and the rule to charts/perfpilot/templates/clusterrole.yaml")
                needs.add((group, res, verb))
        module = importlib.import_module(
            ".".join(path.relative_to(OPERATOR.parent).with_suffix("").parts))
        unresolved: dict[int, str] = {}
        resolved: set[int] = set()
        for scope in ast.walk(tree):   # every function, nested ones too: a splat's tuple may
            if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):  # be outside
                continue
            for node in ast.walk(scope):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and (m := custom.match(node.func.attr))):
                    continue
                # (group, version, [namespace,] plural, ...): literals, a tuple splat, or
                # module constants, evaluated in the calling module.
                args = _call_args(node, scope)
                try:
                    group, plural = (eval(ast.unparse(a), vars(module))  # noqa: S307
                                     for a in (args[0], args[3 if m[2] == "namespaced_" else 2]))
                except (IndexError, NameError):
                    group = plural = None
                if not (isinstance(group, str) and isinstance(plural, str)):
                    unresolved[id(node)] = f"{path.name}:{node.lineno}: {node.func.attr}"
                    continue
                resolved.add(id(node))
                needs.add((group, plural + ("/status" if m[3] else ""),
                           CLIENT_VERBS.get(m[1], m[1])))
        left = [where for key, where in unresolved.items() if key not in resolved]
        assert not left, (f"custom-object calls whose group/plural this test cannot resolve: "
                          f"{left}; list their needs here and in the ClusterRole")
    # ScaleClient builds its method names: f"{verb}_namespaced_{kind}_scale" for apps/v1 kinds.
    from perfpilot_operator.clients import kube

    src = (OPERATOR / "clients" / "kube.py").read_text()
    verbs = set(re.findall(r'self\._call, "(\w+)"', src))
    assert verbs, "ScaleClient no longer calls self._call: update this test"
    for kind in kube._APPS_KINDS:   # noqa: SLF001
        for v in verbs:
            needs.add(("apps", f"{kind.lower()}s/scale", CLIENT_VERBS[v]))
    return needs


def granted(role: dict[str, Any]) -> dict[Need, set[str] | None]:
    """(group, resource, verb) -> resourceNames (None: any name)."""
    out: dict[Need, set[str] | None] = {}
    for rule in role["rules"]:
        names = set(rule["resourceNames"]) if rule.get("resourceNames") else None
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    key = (g, r, v)
                    assert key not in out, f"{key} granted twice"
                    out[key] = names
    return out


def test_clusterrole_grants_exactly_what_the_operator_calls(default: list[dict[str, Any]]) -> None:
    needs = kopf_needs() | client_needs()
    # Secrets: only the CA Secret of the operator's own namespace, granted by a Role (role-ca.yaml).
    secrets = {n for n in needs if n[1] == "secrets"}
    assert secrets == {("", "secrets", "get"), ("", "secrets", "create"), ("", "secrets", "update")}
    assert set(granted(one(default, "Role", "operator-ca"))) == secrets
    needs -= secrets
    # The concrete list, so that a reader (and a reviewer of a change) sees it.
    assert needs == {
        ("perfpilot.io", "perfprofiles", "list"), ("perfpilot.io", "perfprofiles", "watch"),
        ("perfpilot.io", "perfprofiles/status", "patch"),
        ("", "pods", "list"), ("", "pods", "watch"), ("", "pods/resize", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "list"),
        ("autoscaling", "horizontalpodautoscalers", "watch"),
        ("apps", "replicasets", "list"), ("apps", "replicasets", "watch"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "create"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "create"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"),
        ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"), ("coordination.k8s.io", "leases", "list"),
        ("coordination.k8s.io", "leases", "delete"),
        ("monitoring.coreos.com", "prometheusrules", "get"),
        ("monitoring.coreos.com", "prometheusrules", "create"),
        ("monitoring.coreos.com", "prometheusrules", "update"),
        ("monitoring.coreos.com", "prometheusrules", "delete"),
        ("apps", "deployments/scale", "get"), ("apps", "deployments/scale", "patch"),
        ("apps", "statefulsets/scale", "get"), ("apps", "statefulsets/scale", "patch"),
        ("apps", "replicasets/scale", "get"), ("apps", "replicasets/scale", "patch"),
        ("apps", "deployments", "patch"),
    }, "the operator's API calls changed: update the ClusterRole/Role and this list"
    sharded_role = granted(one(render("sharding.enabled=true"), "Role"))
    assert set(sharded_role) == NAMESPACED_ONLY | SHARDING_ONLY
    lease = ("coordination.k8s.io", "leases")
    # The leader Lease is still read by name; member Leases have per-pod names.
    assert sharded_role[(*lease, "get")] and sharded_role[(*lease, "update")] is None
    needs -= SHARDING_ONLY
    optional = set().union(*OPTIONAL_NEEDS.values())
    for value, extra in OPTIONAL_NEEDS.items():
        with_it = granted(one(render(value), "ClusterRole"))
        expected_with = (needs - NOT_GRANTED - NAMESPACED_ONLY - optional) | extra
        assert set(with_it) == expected_with, (value, sorted(set(with_it) ^ expected_with))
    needs -= optional
    cluster_rules = granted(one(default, "ClusterRole"))
    role_rules = granted(one(default, "Role"))
    assert set(role_rules) == NAMESPACED_ONLY
    assert not set(cluster_rules) & NAMESPACED_ONLY
    rules = {**cluster_rules, **role_rules}
    expected = needs - NOT_GRANTED
    assert set(rules) == expected, (f"missing: {sorted(expected - set(rules))}; "
                                    f"not needed: {sorted(set(rules) - expected)}")
    for g, r, v in rules:
        assert "*" not in (g, r, v)
        assert v not in ("escalate", "bind", "impersonate", "update") or r == "leases" or \
            g == "monitoring.coreos.com", (g, r, v)


def test_named_grants_are_the_objects_the_code_touches(default: list[dict[str, Any]]) -> None:
    """get/patch of the webhook configurations, the Lease and of the CA Secret are limited
    by name, and the names are the ones the chart gives the operator."""
    from perfpilot_operator.clients.casecret import SECRET_NAME

    env = env_of(operator_container(default))
    rules = granted(one(default, "ClusterRole"))
    adm = "admissionregistration.k8s.io"
    mutating = one(default, "MutatingWebhookConfiguration", "webhooks")["metadata"]["name"]
    validating = one(default, "ValidatingWebhookConfiguration", "webhooks")["metadata"]["name"]
    assert (env["PERFPILOT_MUTATING_WEBHOOK"], env["PERFPILOT_VALIDATING_WEBHOOK"]) == (
        mutating, validating) == ("pp-perfpilot-pod-injector", "pp-perfpilot-profile-validator")
    for verb in ("get", "patch"):
        assert rules[(adm, "mutatingwebhookconfigurations", verb)] == {mutating}
        assert rules[(adm, "validatingwebhookconfigurations", verb)] == {validating}
    assert not any(r == "secrets" for _, r, _ in rules)    # no Secret outside its own namespace
    ca_role = one(default, "Role", "operator-ca")
    assert ca_role["metadata"]["namespace"] == one(default, "Deployment")["metadata"]["namespace"]
    # create cannot be limited by name in RBAC: it is limited to the operator's namespace
    assert granted(ca_role) == {("", "secrets", "get"): {SECRET_NAME},
                                ("", "secrets", "update"): {SECRET_NAME},
                                ("", "secrets", "create"): None}
    ca_binding = one(default, "RoleBinding", "operator-ca")
    assert ca_binding["roleRef"]["name"] == ca_role["metadata"]["name"]
    assert ca_binding["subjects"] == one(default, "ClusterRoleBinding")["subjects"]
    role = one(default, "Role")
    assert role["metadata"]["namespace"] == "perfpilot-system"
    lease_rules = granted(role)
    for verb in ("get", "update"):
        assert lease_rules[("coordination.k8s.io", "leases", verb)] == {
            env["PERFPILOT_LEADER_LEASE"]}
    assert lease_rules[("coordination.k8s.io", "leases", "create")] is None
    binding = one(default, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == one(default, "ClusterRoleBinding")["subjects"]
    # The release named perfpilot keeps the names the operator uses out of cluster.
    from perfpilot_operator.settings import Settings

    docs = render(namespace="perfpilot-system", release="perfpilot")
    env = env_of(operator_container(docs))
    assert (env["PERFPILOT_MUTATING_WEBHOOK"], env["PERFPILOT_VALIDATING_WEBHOOK"],
            env["PERFPILOT_LEADER_LEASE"]) == (Settings().mutating_webhook,
                                               Settings().validating_webhook,
                                               Settings().leader_lease)


@pytest.mark.parametrize("sets", [
    (),
    ("webhook.failurePolicy=Ignore", "webhook.port=10443"),
    ("webhook.namespaceLabels.team=a", "webhook.namespaceLabels.perfpilot\\.io/enabled=yes",
     "webhook.excludeNamespaces={kube-system,monitoring,perfpilot-system}"),
    ("webhook.excludeNamespaces=null",),
    ("fullnameOverride=ops",),
])
def test_chart_webhook_configurations_equal_the_operators_rendering(
        sets: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """One source: logic/webhooks.py renders what the operator keeps; the chart's objects must
    be the same, field by field, for the operator configured from the chart's environment
    (only the caBundle, which the operator patches in, is absent from the chart's)."""
    from perfpilot_operator.settings import Settings
    from perfpilot_operator.webhook_keeper import desired

    docs = render(*sets, namespace="team-ops")
    for name, value in env_of(operator_container(docs)).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PERFPILOT_NAMESPACE", "team-ops")    # the fieldRef's value
    ours = {d["kind"]: d for d in desired(Settings.from_env(), b"")}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        chart = one(docs, kind, "webhooks")
        ref = ours[kind]
        assert chart["apiVersion"] == ref["apiVersion"]
        assert chart["metadata"]["name"] == ref["metadata"]["name"]
        assert ref["metadata"]["labels"].items() <= chart["metadata"]["labels"].items()
        assert set(chart) == {"apiVersion", "kind", "metadata", "webhooks"}
        assert len(chart["webhooks"]) == len(ref["webhooks"])
        for have, want in zip(chart["webhooks"], ref["webhooks"]):
            assert sorted(have) == sorted(want), kind
            for key in want:
                assert have[key] == want[key], f"{kind} webhooks[{want['name']}].{key}"
            assert "caBundle" not in have["clientConfig"]
        # ... so the keeper finds no drift in a freshly installed configuration but the CA.
        from perfpilot_operator.logic.webhooks import drift

        assert drift(chart, ref) == []


def test_rbac_extra_rules_and_off_switches() -> None:
    docs = render("rbac.extraRules[0].apiGroups[0]=example.com",
                  "rbac.extraRules[0].resources[0]=workers/scale",
                  "rbac.extraRules[0].verbs[0]=get", "rbac.extraRules[0].verbs[1]=patch")
    assert granted(one(docs, "ClusterRole"))[("example.com", "workers/scale", "patch")] is None
    docs = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    kinds = {(d["kind"], d["metadata"]["labels"]["app.kubernetes.io/component"]) for d in docs}
    assert not kinds & {("ClusterRole", "operator"), ("ClusterRoleBinding", "operator"),
                        ("ServiceAccount", "operator")}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# ------------------------------------------------------------------------------------ docs
def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Leaf keys of values.yaml; free-form blocks (resources, security contexts, probe timings)
    count as one."""
    whole = {"resources", "podSecurityContext", "securityContext", "health.livenessProbe",
             "health.readinessProbe", "sidecarMetrics.podMonitor.namespaceSelector"}
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in whole:
            out += value_paths(value, f"{path}.")
        else:
            out.append(path)
    return out


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in value_paths(values) if f"`{p}`" not in readme]
    assert missing == [], f"charts/perfpilot/README.md does not document {missing}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"]), "values.yaml has keys the schema refuses"
