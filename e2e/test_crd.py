"""The PerfProfile CRD on the real API server (kube-apiserver v1.35).

- The CRD installs and is Established; `kubectl explain` prints its descriptions.
- Every example under examples/ is accepted and comes back with the schema defaults filled in.
- A table of invalid profiles: each one is refused by `kubectl apply` (the API server's OpenAPI
  schema, CEL rules and strict field validation), and the error names the offending field and the
  reason. No case depends on the operator running.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness.cluster import LocalCluster
from perfpilot_contract.limits import KERNEL_NAMES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CRD_NAME = "perfprofiles.perfpilot.io"


def _example(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name / "perfprofile.yaml").read_text()) if d]
    (doc,) = [d for d in docs if d.get("kind") == "PerfProfile"]
    return doc


def example_profiles() -> list[Path]:
    return sorted(EXAMPLES.glob("*/perfprofile.yaml"))


# ---------------------------------------------------------------- the invalid-profile table
DELETE = object()
_SEG = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with DELETE remove) `a.b[0].c` in doc, creating missing maps on the way."""
    keys: list[str | int] = [m.group(1) if m.group(1) is not None else int(m.group(2))
                             for m in _SEG.finditer(path)]
    node: Any = doc
    for k in keys[:-1]:
        if isinstance(k, int):
            node = node[k]
        else:
            node = node.setdefault(k, {})
    last = keys[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


@dataclass(frozen=True)
class Invalid:
    id: str
    changes: dict[str, Any]  # dotted path -> new value (DELETE removes it), applied to `base`
    expect: tuple[str, ...]  # substrings that must all appear in kubectl's stderr
    base: str = "02-full"

    def document(self) -> dict[str, Any]:
        doc = copy.deepcopy(_example(self.base))
        doc["metadata"] = {"name": f"bad-{self.id}"[:63].rstrip("-")}
        for path, value in self.changes.items():
            _set(doc, path, value)
        return doc


A0 = "spec.alerts[0]"
APP = "spec.resources.app"
AS = "spec.autoscaling"
SC = "spec.resources.sidecar"

INVALID: list[Invalid] = [
    # --- wrong types (schema)
    Invalid("type-minreplicas-string", {f"{AS}.minReplicas": "two"},
            (f"{AS}.minReplicas", "must be of type integer")),
    Invalid("type-parallel-string", {"spec.kernels.parallel": "yes"},
            ("spec.kernels.parallel", "must be of type boolean")),
    Invalid("type-threshold-string", {f"{A0}.threshold": "high"},
            (f"{A0}.threshold", "must be of type number")),
    Invalid("type-warm-not-a-list", {"spec.kernels.warm": "cosine_topk"},
            ("spec.kernels.warm", "must be of type array")),
    Invalid("type-matchlabels-list", {"spec.selector.matchLabels": ["app=agent"]},
            ("spec.selector.matchLabels", "must be of type object")),
    Invalid("type-quantity-float", {f"{APP}.requests.cpu": 1.5},
            (f"{APP}.requests.cpu", "must be of type integer,string")),
    # --- out-of-range numbers (schema bounds)
    Invalid("range-processworkers-65", {"spec.pools.processWorkers": 65},
            ("spec.pools.processWorkers", "should be less than or equal to 64")),
    Invalid("range-threadworkers-0", {"spec.pools.threadWorkers": 0},
            ("spec.pools.threadWorkers", "should be greater than or equal to 1")),
    Invalid("range-maxqueue-negative", {"spec.pools.maxQueue": -1},
            ("spec.pools.maxQueue", "should be greater than or equal to 1")),
    Invalid("range-maxreplicas-0", {f"{AS}.maxReplicas": 0},
            (f"{AS}.maxReplicas", "should be greater than or equal to 1")),
    Invalid("range-maxreplicas-1001", {f"{AS}.maxReplicas": 1001},
            (f"{AS}.maxReplicas", "should be less than or equal to 1000")),
    Invalid("range-tolerance-1", {f"{AS}.tolerance": 1},
            (f"{AS}.tolerance", "should be less than 1")),
    Invalid("range-tolerance-negative", {f"{AS}.tolerance": -0.1},
            (f"{AS}.tolerance", "should be greater than or equal to 0")),
    Invalid("range-target-0", {f"{AS}.target": 0},
            (f"{AS}.target", "should be greater than 0")),
    Invalid("range-threshold-negative", {f"{A0}.threshold": -1},
            (f"{A0}.threshold", "should be greater than or equal to 0")),
    Invalid("range-cache-maxentries", {"spec.cache.maxEntries": 10_000_001},
            ("spec.cache.maxEntries", "should be less than or equal to 10000000")),
    Invalid("range-l1-maxbytes", {"spec.cache.l1": {"maxBytes": (1 << 30) + 1}},
            ("spec.cache.l1.maxBytes", "should be less than or equal to 1073741824")),
    Invalid("range-l1-ttl", {"spec.cache.l1": {"ttl": "2h"}},
            ("spec.cache.l1.ttl", "must be between 0s and 1h, got 2h")),
    Invalid("type-l1-enabled", {"spec.cache.l1": {"enabled": "yes"}},
            ("spec.cache.l1.enabled", "must be of type boolean")),
    # --- cross-field rules (CEL)
    Invalid("min-above-max", {f"{AS}.minReplicas": 5, f"{AS}.maxReplicas": 3},
            (f"{AS}.minReplicas", "minReplicas (5) must be <= maxReplicas (3)")),
    Invalid("app-cpu-limit-below-request", {f"{APP}.limits.cpu": "250m"},
            (f"{APP}.limits.cpu", "limits.cpu (250m) must be >= requests.cpu (500m)")),
    Invalid("app-memory-limit-below-request", {f"{APP}.limits.memory": "256Mi"},
            (f"{APP}.limits.memory", "limits.memory (256Mi) must be >= requests.memory (512Mi)")),
    Invalid("app-cpu-int-limit-below-request", {f"{APP}.requests.cpu": 3, f"{APP}.limits.cpu": 2},
            (f"{APP}.limits.cpu", "limits.cpu (2) must be >= requests.cpu (3)")),
    Invalid("sidecar-memory-limit-below-request", {f"{SC}.limits.memory": "32Mi"},
            (f"{SC}.limits.memory", "limits.memory (32Mi) must be >= requests.memory (192Mi)")),
    Invalid("shared-memory-below-a-pods-own", {"spec.resources.sharedMemory": "32Mi"},
            ("spec.resources.sharedMemory", "must be a quantity of at least 64Mi")),
    Invalid("sidecar-limit-below-defaulted-request",
            {"spec.resources": {"sidecar": {"limits": {"cpu": "20m", "memory": "256Mi"}}}},
            (f"{SC}.limits.cpu", "limits.cpu (20m) must be >= requests.cpu (50m)")),
    Invalid("heartbeat-timeout-not-below-interval", {"spec.heartbeat": {"interval": "1s",
                                                                       "timeout": "1s"}},
            ("spec.heartbeat.timeout", "timeout (1s) must be shorter than interval (1s)")),
    Invalid("batchsize-above-maxqueue", {"spec.pools.batchSize": 2000},
            ("spec.pools.batchSize", "batchSize (2000) must be <= maxQueue (1000)")),
    Invalid("ratio-threshold-above-1", {"spec.alerts[1].threshold": 5},
            ("spec.alerts[1].threshold", "app_error_ratio is a ratio")),
    Invalid("autoscaling-on-cache-hit-ratio",
            {f"{AS}.metric": "cache_hit_ratio", f"{AS}.target": 0.9},
            (f"{AS}.metric", "cache_hit_ratio cannot drive autoscaling")),
    Invalid("autoscaling-error-ratio-target-above-1",
            {f"{AS}.metric": "app_error_ratio", f"{AS}.target": 5},
            (f"{AS}.target", "app_error_ratio is a ratio: target must be > 0 and <= 1, got 5")),
    Invalid("autoscaling-without-target", {"spec.target": DELETE},
            ("spec.target", "Required value", "target is required when autoscaling is set")),
    # --- required fields
    Invalid("missing-spec", {"spec": DELETE}, ("spec", "Required value")),
    Invalid("missing-selector", {"spec.selector": DELETE}, ("spec.selector", "Required value")),
    Invalid("missing-maxreplicas", {f"{AS}.maxReplicas": DELETE},
            (f"{AS}.maxReplicas", "Required value")),
    Invalid("alert-missing-op", {f"{A0}.op": DELETE}, (f"{A0}.op", "Required value")),
    # --- unknown fields (kubectl's default --validate=strict)
    Invalid("unknown-field-spec", {"spec.foo": 1}, ('unknown field "spec.foo"',)),
    Invalid("unknown-field-typo", {f"{AS}.maxReplica": 10},
            (f'unknown field "{AS}.maxReplica"',)),
    Invalid("unknown-field-in-alert", {f"{A0}.threshhold": 1},
            (f'unknown field "{A0}.threshhold"',)),
    Invalid("unknown-resource-name", {f"{APP}.requests.gpu": 1},
            (f'unknown field "{APP}.requests.gpu"',)),
    # --- malformed durations
    Invalid("duration-words", {"spec.heartbeat.interval": "5 seconds"},
            ("spec.heartbeat.interval", "should match")),
    Invalid("duration-days", {"spec.cache.ttl": "1d"}, ("spec.cache.ttl", "should match")),
    Invalid("shared-ca-secret-without-tls", {"spec.cache.shared.url": "redis://redis.cache.svc:6379/0"},
            ("spec.cache.shared.tls.caSecret", "needs a rediss:// cache.shared.url")),
    Invalid("shared-ca-secret-bad-name", {"spec.cache.shared.tls.caSecret.name": "Redis_TLS"},
            ("spec.cache.shared.tls.caSecret.name", "should match")),
    Invalid("duration-no-unit", {f"{A0}.for": "30"}, (f"{A0}.for", "should match")),
    Invalid("duration-negative", {"spec.pools.batchWait": "-10ms"},
            ("spec.pools.batchWait", "should match")),
    Invalid("duration-interval-too-short", {"spec.heartbeat.interval": "50ms"},
            ("spec.heartbeat.interval", "must be between 100ms and 10m, got 50ms")),
    Invalid("duration-window-too-long", {f"{AS}.scaleDown.stabilizationWindow": "2h"},
            (f"{AS}.scaleDown.stabilizationWindow", "must be between 0s and 1h, got 2h")),
    Invalid("duration-autoscaling-interval-0s", {f"{AS}.interval": "0s"},
            (f"{AS}.interval", "must be between 1s and 10m, got 0s")),
    # --- malformed quantities
    Invalid("quantity-word", {f"{APP}.requests.cpu": "lots"},
            (f"{APP}.requests.cpu", "must be a non-negative quantity", "got lots")),
    Invalid("quantity-negative", {f"{SC}.limits.memory": "-1Gi"},
            (f"{SC}.limits.memory", "must be a non-negative quantity")),
    Invalid("quantity-bad-suffix", {f"{APP}.limits.memory": "2GB"},
            (f"{APP}.limits.memory", "must be a non-negative quantity")),
    # --- unknown enum values
    Invalid("enum-op", {f"{A0}.op": "="}, (f"{A0}.op", "Unsupported value", '"="')),
    Invalid("enum-severity", {f"{A0}.severity": "page"},
            (f"{A0}.severity", "Unsupported value", '"page"')),
    Invalid("enum-alert-metric", {f"{A0}.metric": "latency"},
            (f"{A0}.metric", "Unsupported value", '"latency"')),
    Invalid("enum-autoscaling-metric", {f"{AS}.metric": "rps"},
            (f"{AS}.metric", "Unsupported value")),
    Invalid("enum-onmissingmetrics", {f"{AS}.onMissingMetrics": "panic"},
            (f"{AS}.onMissingMetrics", "Unsupported value")),
    Invalid("enum-selector-operator", {"spec.selector.matchExpressions[0].operator": "Equals"},
            ("spec.selector.matchExpressions[0].operator", "Unsupported value")),
    # --- duplicates
    Invalid("duplicate-alert-names", {"spec.alerts[1].name": "HeartbeatSlow"},
            ("spec.alerts[1]", "Duplicate value",
             'alert names must be unique within a profile, repeated: ["HeartbeatSlow"]')),
    Invalid("enum-warm-kernel", {"spec.kernels.warm": ["cosine_topk", "cosine_top_k"]},
            ("spec.kernels.warm[1]", "Unsupported value", '"cosine_top_k"',
             *(f'"{k}"' for k in KERNEL_NAMES))),
    Invalid("duplicate-warm-kernels", {"spec.kernels.warm": ["cosine_topk", "cosine_topk"]},
            ("spec.kernels.warm[1]", "Duplicate value")),
    # --- selector
    Invalid("selector-empty", {"spec.selector": {}},
            ("spec.selector", "selector must not be empty")),
    Invalid("selector-empty-matchlabels", {"spec.selector": {"matchLabels": {}}},
            ("spec.selector", "selector must not be empty"), base="01-minimal"),
    Invalid("selector-in-without-values", {"spec.selector.matchExpressions[0].values": DELETE},
            ("spec.selector.matchExpressions[0].values",
             "values must be non-empty when operator is In")),
    Invalid("selector-exists-with-values",
            {"spec.selector.matchExpressions[0].operator": "Exists"},
            ("spec.selector.matchExpressions[0].values",
             "values must be empty when operator is Exists")),
    Invalid("selector-bad-label-value", {"spec.selector.matchLabels.app": "my agent"},
            ("spec.selector.matchLabels.app", "should match")),
    Invalid("selector-bad-label-key", {"spec.selector.matchLabels": {"-app": "agent"}},
            ("spec.selector.matchLabels", "must be a valid label key", 'invalid: ["-app"]')),
    # --- names and patterns
    Invalid("alert-name-with-space", {f"{A0}.name": "Heartbeat slow"},
            (f"{A0}.name", "should match")),
    Invalid("target-kind-lowercase", {"spec.target.kind": "deployment"},
            ("spec.target.kind", "should match")),
    Invalid("app-container-bad-name", {f"{APP}.container": "Agent_1"},
            (f"{APP}.container", "should match")),
]


def _ids() -> list[str]:
    return [c.id for c in INVALID]


def test_invalid_table_is_large_and_unique() -> None:
    assert len(INVALID) >= 30
    assert len(set(_ids())) == len(INVALID)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> LocalCluster:
    cluster.apply_crds()  # idempotent; the session fixture already did it once
    return cluster


@pytest.fixture(scope="module")
def shared_namespace(crd: LocalCluster) -> Iterator[str]:
    """One namespace for the invalid table: nothing is ever created in it."""
    name = f"e2e-crd-{uuid.uuid4().hex[:8]}"
    crd.kubectl("create", "namespace", name)
    yield name
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ---------------------------------------------------------------- the CRD itself
def test_crd_is_established_with_short_name_and_category(crd: LocalCluster) -> None:
    obj = json.loads(crd.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert obj["spec"]["names"]["shortNames"] == ["pp"]
    assert "perfpilot" in obj["spec"]["names"]["categories"]
    (version,) = obj["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    resources = crd.kubectl("api-resources", "--api-group=perfpilot.io", "-o", "wide").stdout
    assert re.search(r"^perfprofiles\s+pp\s+perfpilot\.io/v1alpha1\s+true\s+PerfProfile", resources,
                     re.M), resources


def test_explain_reads_as_documentation(crd: LocalCluster) -> None:
    out = crd.kubectl("explain", "perfprofile.spec.autoscaling").stdout
    assert "HPA algorithm" in out
    for name in ("minReplicas", "maxReplicas", "metric", "target", "tolerance", "interval",
                 "scaleUp", "scaleDown", "onMissingMetrics"):
        assert re.search(rf"^\s+{name}\s+<", out, re.M), f"{name} missing from explain:\n{out}"
    assert "-required-" in out  # maxReplicas, metric and target
    leaf = crd.kubectl("explain", "pp.spec.autoscaling.onMissingMetrics").stdout
    assert "hold keeps the current replicas" in leaf
    assert "ENUM" in leaf and "scaleToMin" in leaf
    status = crd.kubectl("explain", "pp.status.pods.configured").stdout
    assert "current generation" in status


def test_published_openapi_documents_every_field(crd: LocalCluster) -> None:
    """The OpenAPI v3 document the server publishes (what `kubectl explain` reads) carries a
    description on every PerfProfile field, spec and status."""
    doc = json.loads(crd.kubectl("get", "--raw", "/openapi/v3/apis/perfpilot.io/v1alpha1").stdout)
    root = doc["components"]["schemas"]["io.perfpilot.v1alpha1.PerfProfile"]
    undocumented: list[str] = []
    seen = 0

    def visit(node: dict[str, Any], path: str) -> None:
        nonlocal seen
        for name, sub in (node.get("properties") or {}).items():
            here = f"{path}.{name}"
            seen += 1
            if not sub.get("description") and "$ref" not in sub and "allOf" not in sub:
                undocumented.append(here)
            visit(sub, here)
        if isinstance(node.get("items"), dict):
            visit(node["items"], f"{path}[]")

    visit(root["properties"]["spec"], "spec")
    visit(root["properties"]["status"], "status")
    assert seen > 80
    assert not undocumented, undocumented
    for path in ("spec.selector.matchExpressions.values", "spec.resources.app.limits.cpu",
                 "spec.pools.batchWait", "spec.alerts.for", "status.activeAlerts.state"):
        text = crd.kubectl("explain", f"perfprofile.{path}").stdout
        assert text.split("DESCRIPTION:", 1)[1].strip(), f"{path}: {text}"


# ---------------------------------------------------------------- examples and defaults
@pytest.mark.parametrize("path", example_profiles(), ids=lambda p: p.parent.name)
def test_example_is_accepted_with_defaults(crd: LocalCluster, namespace: str, path: Path) -> None:
    written = _example(path.parent.name)
    crd.kubectl("apply", "-n", namespace, "-f", str(path))
    got = json.loads(crd.kubectl("get", "pp", written["metadata"]["name"], "-n", namespace,
                                 "-o", "json").stdout)
    spec = got["spec"]
    # What the user wrote comes back unchanged ...
    _assert_contains(spec, written["spec"], "spec")
    # ... and every default is filled in, whether or not the parent object was written.
    # The members of a pair (heartbeat interval/timeout, pools maxQueue/batchSize) have no schema
    # default: defaults run before CEL (the contract's conversion fills them in the sidecar).
    assert spec["heartbeat"] == written["spec"].get("heartbeat", {})
    pools = {"processWorkers": 2, "threadWorkers": 8, "batchWait": "10ms"}
    assert spec["pools"] == {**pools, **written["spec"].get("pools", {})}
    l1 = {"enabled": False, "maxEntries": 1000, "maxBytes": 16 << 20, "ttl": "10s", "maxValueBytes": 64 << 10}
    written_cache = written["spec"].get("cache", {})
    assert spec["cache"] == {"ttl": "5m", "maxEntries": 10000, **written_cache,
                             "l1": {**l1, **written_cache.get("l1", {})}}
    assert spec["kernels"]["parallel"] is True
    assert spec["kernels"]["warm"] == written["spec"].get("kernels", {}).get("warm", [])
    sidecar = spec["resources"]["sidecar"]
    written_sidecar = written["spec"].get("resources", {}).get("sidecar", {})
    assert sidecar["requests"] == written_sidecar.get("requests", {"cpu": "50m", "memory": "192Mi"})
    assert sidecar["limits"] == written_sidecar.get("limits", {"cpu": "1", "memory": "640Mi"})
    for i, alert in enumerate(spec.get("alerts", [])):
        w = written["spec"]["alerts"][i]
        assert alert["severity"] == w.get("severity", "warning")
        assert alert["for"] == w.get("for", "0s")
    if "autoscaling" in written["spec"]:
        a, w = spec["autoscaling"], written["spec"]["autoscaling"]
        assert a["minReplicas"] == w.get("minReplicas", 1)
        assert a["tolerance"] == w.get("tolerance", 0.1)
        assert a["interval"] == w.get("interval", "15s")
        assert a["onMissingMetrics"] == w.get("onMissingMetrics", "hold")
        assert a["scaleUp"] == {"stabilizationWindow": "0s", "maxStep": 4, **w.get("scaleUp", {})}
        assert a["scaleDown"] == {"stabilizationWindow": "5m", "maxStep": 1,
                                  **w.get("scaleDown", {})}
        assert spec["target"]["apiVersion"] == "apps/v1"
        assert spec["target"]["kind"] == "Deployment"
    else:
        assert "autoscaling" not in spec
    # The printer columns render (no status yet: the operator is not running here).
    table = crd.kubectl("get", "pp", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "SELECTED", "INJECTED", "CONFIGURED",
                                "REPLICAS", "ALERTS", "AGE"]
    assert table[1].split()[0] == written["metadata"]["name"]
    wide = crd.kubectl("get", "pp", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert {"REASON", "UNHEALTHY", "DESIRED", "TARGET"} <= set(wide)


def test_example_deployments_are_valid(crd: LocalCluster, namespace: str) -> None:
    for path in sorted(EXAMPLES.glob("*/deployment.yaml")):
        crd.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))


def test_status_subresource_and_columns(crd: LocalCluster, namespace: str) -> None:
    """Status is written through /status only; the columns show what a person checks first."""
    crd.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "02-full" / "perfprofile.yaml"))
    status = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllPodsConfigured",
                        "message": "3/3 pods configured", "lastTransitionTime":
                        "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "pods": {"selected": 3, "injected": 3, "configured": 3, "unhealthy": 0},
        "replicas": {"current": 3, "desired": 4, "lastScaleTime": "2026-01-01T00:00:00Z",
                     "reason": "queue_depth 80 > target 50: 3 -> 4"},
        "activeAlerts": [{"name": "HeartbeatSlow", "state": "firing", "severity": "warning",
                          "since": "2026-01-01T00:00:00Z", "value": 0.25,
                          "message": "heartbeat_p99_seconds 0.25 > 0.1"},
                         {"name": "ErrorsHigh", "state": "pending", "severity": "critical",
                          "since": "2026-01-01T00:00:00Z", "value": 0.07}],
    }
    # A patch of the main resource does not touch status (the response is the stored object;
    # an operator running against this cluster may write its own status, never these numbers) ...
    main = crd.kubectl("patch", "pp", "agents", "-n", namespace, "--type=merge", "-o", "json",
                       "-p", json.dumps({"status": status}))
    assert json.loads(main.stdout).get("status", {}).get("pods", {}).get("selected") != 3
    # ... the status subresource does. Retried, in case a running operator rewrites status
    # between our patch and our read.
    cells: dict[str, str] = {}
    for _ in range(5):
        patched = crd.kubectl("patch", "pp", "agents", "-n", namespace, "--subresource=status",
                              "--type=merge", "-o", "json", "-p", json.dumps({"status": status}))
        stored = json.loads(patched.stdout)["status"]
        # (subset: a running operator may add its own counters, e.g. stale, to what we wrote)
        assert {k: stored["pods"].get(k) for k in status["pods"]} == status["pods"]
        assert stored["replicas"]["desired"] == 4
        assert [a["state"] for a in stored["activeAlerts"]] == ["firing", "pending"]
        header, row = crd.kubectl("get", "pp", "-n", namespace).stdout.splitlines()[:2]
        cells = dict(zip(header.split(), row.split()))
        if cells.get("SELECTED") == "3":
            break
        time.sleep(0.5)
    assert cells["READY"] == "True"
    assert cells["SELECTED"] == cells["INJECTED"] == cells["CONFIGURED"] == cells["REPLICAS"] == "3"
    assert cells["ALERTS"] == "HeartbeatSlow"  # only the firing one
    # The status schema is validated too.
    bad = crd.kubectl("patch", "pp", "agents", "-n", namespace, "--subresource=status",
                      "--type=merge", "-p", json.dumps({"status": {"pods": {"selected": -1}}}),
                      check=False)
    assert bad.returncode != 0
    assert "status.pods.selected" in bad.stderr


# ---------------------------------------------------------------- invalid profiles
@pytest.mark.parametrize("case", INVALID, ids=_ids())
def test_invalid_profile_is_rejected(crd: LocalCluster, shared_namespace: str,
                                     case: Invalid) -> None:
    doc = case.document()
    proc = crd.kubectl("apply", "-n", shared_namespace, "-f", "-", input=yaml.safe_dump(doc),
                       check=False)
    assert proc.returncode != 0, f"{case.id}: accepted\n{proc.stdout}"
    missing = [s for s in case.expect if s not in proc.stderr]
    assert not missing, f"{case.id}: {missing} not in:\n{proc.stderr}"
    # Nothing was stored.
    get = crd.kubectl("get", "pp", doc["metadata"]["name"], "-n", shared_namespace, check=False)
    assert get.returncode != 0 and "NotFound" in get.stderr


def test_one_member_of_a_pair_and_caching_off_are_accepted(crd: LocalCluster, namespace: str) -> None:
    """Values the contract calls valid are stored as written, with no default joining a pair."""
    doc = _example("01-minimal")
    doc["spec"].update(pools={"maxQueue": 64}, heartbeat={"interval": "150ms"},
                       cache={"ttl": "0s", "maxEntries": 0},
                       kernels={"warm": list(KERNEL_NAMES)})
    crd.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    spec = json.loads(crd.kubectl("get", "pp", doc["metadata"]["name"], "-n", namespace,
                                  "-o", "json").stdout)["spec"]
    assert spec["pools"] == {"maxQueue": 64, "processWorkers": 2, "threadWorkers": 8,
                             "batchWait": "10ms"}
    assert spec["heartbeat"] == {"interval": "150ms"}
    assert {k: v for k, v in spec["cache"].items() if k != "l1"} == {"ttl": "0s", "maxEntries": 0}
    assert spec["cache"]["l1"]["enabled"] is False  # the near-cache's default: off
    assert spec["kernels"]["warm"] == list(KERNEL_NAMES)


def test_server_dry_run_rejects_like_apply(crd: LocalCluster, shared_namespace: str) -> None:
    case = next(c for c in INVALID if c.id == "min-above-max")
    proc = crd.kubectl("create", "--dry-run=server", "-n", shared_namespace, "-f", "-",
                       input=yaml.safe_dump(case.document()), check=False)
    assert proc.returncode != 0
    assert all(s in proc.stderr for s in case.expect), proc.stderr


def test_update_is_validated_too(crd: LocalCluster, namespace: str) -> None:
    """The rules hold on update as on create: a valid profile cannot be patched into a bad one."""
    crd.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "03-autoscaling" /
                                                     "perfprofile.yaml"))
    proc = crd.kubectl("patch", "pp", "agents", "-n", namespace, "--type=merge",
                       "-p", '{"spec": {"autoscaling": {"minReplicas": 30}}}', check=False)
    assert proc.returncode != 0
    assert "spec.autoscaling.minReplicas" in proc.stderr
    assert "minReplicas (30) must be <= maxReplicas (20)" in proc.stderr


# ---------------------------------------------------------------- helpers
def _assert_contains(got: Any, want: Any, where: str) -> None:
    """Every key/value in `want` is in `got` (defaults may add more)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not a map"
        for k, v in want.items():
            assert k in got, f"{where}.{k} missing"
            _assert_contains(got[k], v, f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_contains(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"

