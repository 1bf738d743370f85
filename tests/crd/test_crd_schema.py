"""Static checks of crds/perfprofile.yaml (no cluster): identity, documentation on every field,
structural schema, examples and defaults valid, printer columns resolvable, CEL hygiene.

The API server's own verdict (CEL rules, messages) is in e2e/test_crd.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from crd_schema_walk import (
    CRD_PATH,
    ROOT,
    Schema,
    apply_defaults,
    cel_rules,
    load_crd,
    properties,
    resolve,
    validate,
    version_schema,
    walk,
)

CRD = load_crd()
SCHEMA = version_schema(CRD)
SPEC = SCHEMA["properties"]["spec"]
EXAMPLES = sorted((ROOT / "examples").glob("*/perfprofile.yaml"))

METRICS = [
    "heartbeat_p99_seconds", "app_latency_p95_seconds", "app_latency_p99_seconds",
    "app_error_ratio", "queue_depth", "pool_utilization", "cpu_utilization",
    "memory_utilization", "cache_hit_ratio", "kernel_p99_seconds",
]
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$"
DURATION_CEL_REGEX = "^([0-9]+([.][0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$"

# Every field of the PerfProfile example in DESIGN.md ("The PerfProfile resource").
DESIGN_FIELDS = """
spec.selector.matchLabels
spec.target.apiVersion spec.target.kind spec.target.name
spec.resources.app.container spec.resources.app.requests.cpu spec.resources.app.requests.memory
spec.resources.app.limits.cpu spec.resources.app.limits.memory
spec.resources.sidecar.requests.cpu spec.resources.sidecar.requests.memory
spec.resources.sidecar.limits.cpu spec.resources.sidecar.limits.memory
spec.heartbeat.interval spec.heartbeat.timeout
spec.pools.processWorkers spec.pools.threadWorkers spec.pools.maxQueue spec.pools.batchSize
spec.pools.batchWait
spec.cache.ttl spec.cache.maxEntries
spec.cache.l1.enabled spec.cache.l1.maxEntries spec.cache.l1.maxBytes spec.cache.l1.ttl
spec.cache.l1.maxValueBytes
spec.kernels.warm spec.kernels.parallel
spec.alerts[].name spec.alerts[].metric spec.alerts[].op spec.alerts[].threshold spec.alerts[].for
spec.alerts[].severity
spec.autoscaling.minReplicas spec.autoscaling.maxReplicas spec.autoscaling.metric
spec.autoscaling.target spec.autoscaling.tolerance spec.autoscaling.interval
spec.autoscaling.scaleUp.stabilizationWindow spec.autoscaling.scaleUp.maxStep
spec.autoscaling.scaleDown.stabilizationWindow spec.autoscaling.scaleDown.maxStep
spec.autoscaling.onMissingMetrics
status.observedGeneration status.conditions[].type status.conditions[].status
status.conditions[].reason status.conditions[].message status.conditions[].lastTransitionTime
status.pods.selected status.pods.injected status.pods.configured status.pods.unhealthy
status.pods.uninjected
status.replicas.current status.replicas.desired status.replicas.lastScaleTime
status.replicas.reason status.activeAlerts[].name status.activeAlerts[].severity
status.activeAlerts[].since status.activeAlerts[].value
""".split()


def _doc(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8"))
              if d and d.get("kind") == "PerfProfile"]
    return doc


# ---------------------------------------------------------------- identity
def test_identity() -> None:
    spec = CRD["spec"]
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == "perfprofiles.perfpilot.io"
    assert spec["group"] == "perfpilot.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "PerfProfile"
    assert spec["names"]["plural"] == "perfprofiles"
    assert spec["names"]["shortNames"] == ["pp"]
    assert spec["names"]["categories"] == ["perfpilot"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    # The profile scales a target; it is not itself scalable.
    assert version["subresources"] == {"status": {}}


def test_design_fields_exist() -> None:
    missing = [p for p in DESIGN_FIELDS if resolve(SCHEMA, p) is None]
    assert not missing


def test_required_fields() -> None:
    assert SCHEMA["required"] == ["spec"]
    assert SPEC["required"] == ["selector"]
    assert set(SPEC["properties"]["autoscaling"]["required"]) == {"maxReplicas", "metric", "target"}
    assert set(SPEC["properties"]["alerts"]["items"]["required"]) == {
        "name", "metric", "op", "threshold"}
    assert SPEC["properties"]["target"]["required"] == ["name"]


def test_enums_follow_the_design() -> None:
    alert = SPEC["properties"]["alerts"]["items"]["properties"]
    assert alert["metric"]["enum"] == METRICS
    assert alert["op"]["enum"] == [">", ">=", "<", "<="]
    assert alert["severity"]["enum"] == ["info", "warning", "critical"]
    assert SPEC["properties"]["autoscaling"]["properties"]["metric"]["enum"] == METRICS
    assert SPEC["properties"]["autoscaling"]["properties"]["onMissingMetrics"]["enum"][0] == "hold"


# ---------------------------------------------------------------- documentation
def test_every_property_has_a_description() -> None:
    undocumented = [p for p, s in properties(SCHEMA)
                    if p != "metadata" and not str(s.get("description", "")).strip()]
    assert not undocumented, undocumented


def test_object_list_items_have_a_description() -> None:
    undocumented = [p for p, s in walk(SCHEMA)
                    if p.endswith("[]") and s.get("type") == "object" and not s.get("description")]
    assert not undocumented


def test_defaults_are_documented() -> None:
    """A scalar default appears in the field's description, so `kubectl explain` shows it."""
    wrong = []
    for path, sub in properties(SCHEMA):
        if "default" not in sub or isinstance(sub["default"], dict):
            continue
        d = sub["default"]
        shown = "[]" if d == [] else "true" if d is True else "false" if d is False else str(d)
        if shown not in sub["description"]:
            wrong.append(f"{path}: default {shown} not in description")
    assert not wrong, wrong


# ---------------------------------------------------------------- structure
def test_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string); objects declare their fields."""
    problems = []
    for path, sub in walk(SCHEMA):
        if path == "metadata":
            continue
        if "type" not in sub and not sub.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: no type")
        if sub.get("type") == "object" and not (
                "properties" in sub or "additionalProperties" in sub
                or sub.get("x-kubernetes-preserve-unknown-fields")):
            problems.append(f"{path}: object without properties")
        if sub.get("type") == "array" and "items" not in sub:
            problems.append(f"{path}: array without items")
    assert not problems, problems


def test_spec_is_bounded_for_cel_cost() -> None:
    """Lists, maps and free strings in spec carry a size bound (keeps CEL cost estimates low)."""
    unbounded = []
    for path, sub in walk(SPEC, "spec"):
        t = sub.get("type")
        if t == "array" and "maxItems" not in sub:
            unbounded.append(path)
        if t == "object" and "additionalProperties" in sub and "maxProperties" not in sub:
            unbounded.append(path)
        if (t == "string" or sub.get("x-kubernetes-int-or-string")) and not (
                "maxLength" in sub or "enum" in sub):
            unbounded.append(path)
    assert not unbounded, unbounded


def test_only_kopf_bookkeeping_preserves_unknown_fields() -> None:
    preserving = [p for p, s in walk(SCHEMA) if s.get("x-kubernetes-preserve-unknown-fields")]
    assert preserving == ["status.kopf"]


def test_duration_fields_share_one_pattern_and_guard() -> None:
    durations = [(p, s) for p, s in walk(SCHEMA) if s.get("pattern") == DURATION_PATTERN]
    assert {p for p, _ in durations} == {
        "spec.heartbeat.interval", "spec.heartbeat.timeout", "spec.pools.batchWait",
        "spec.cache.ttl", "spec.cache.l1.ttl", "spec.alerts[].for", "spec.autoscaling.interval",
        "spec.autoscaling.scaleUp.stabilizationWindow",
        "spec.autoscaling.scaleDown.stabilizationWindow"}
    for path, sub in durations:
        # heartbeat.interval/timeout: no schema default (a pair; the contract computes it).
        assert "default" not in sub or re.match(DURATION_PATTERN, sub["default"]), path
        assert sub["maxLength"] == 32, path
        for rule in sub.get("x-kubernetes-validations", []):
            # duration() fails on a malformed string; the pattern check reports that instead.
            assert rule["rule"].startswith(f"!self.matches('{DURATION_CEL_REGEX}') || "), path
    # The two spellings of the regex accept the same strings.
    for s in ["5s", "1.5h", "1m30s", "250ms", "10µs", "0s", "5", "1d", "-1s", "5 s", "1.s"]:
        assert bool(re.match(DURATION_PATTERN, s)) == bool(re.match(DURATION_CEL_REGEX, s)), s


def test_cel_rules_have_messages_and_valid_field_paths() -> None:
    rules = list(cel_rules(SCHEMA))
    assert len(rules) >= 20
    for path, sub, rule in rules:
        assert rule.get("message") or rule.get("messageExpression"), f"{path}: {rule['rule']}"
        if "fieldPath" in rule:
            target = rule["fieldPath"].lstrip(".")
            assert resolve(sub, target) is not None, f"{path}: fieldPath {rule['fieldPath']}"
        if "reason" in rule:
            assert rule["reason"] in {"FieldValueInvalid", "FieldValueRequired",
                                      "FieldValueDuplicate", "FieldValueForbidden"}


def test_cross_field_rules_exist() -> None:
    """The rules the schema alone cannot state (the issue's list)."""
    text = {f"{p}: {r['rule']}" for p, _, r in cel_rules(SCHEMA)}

    def has(path: str, fragment: str) -> bool:
        return any(t.startswith(f"{path}: ") and fragment in t for t in text)

    assert has("spec.autoscaling", "self.minReplicas <= self.maxReplicas")
    for side in ("app", "sidecar"):
        for res in ("cpu", "memory"):
            assert has(f"spec.resources.{side}",
                       f"quantity(string(self.limits.{res})).compareTo("
                       f"quantity(string(self.requests.{res}))) >= 0")
            assert has(f"spec.resources.{side}.requests.{res}", "isQuantity(string(self))")
            assert has(f"spec.resources.{side}.limits.{res}", "isQuantity(string(self))")
    assert has("spec.alerts", "exists_one(b, b.name == a.name)")
    assert has("spec.selector", "size(self.matchLabels) > 0")
    assert has("spec", "!has(self.autoscaling) || has(self.target)")
    assert has("spec.heartbeat", "duration(self.timeout) < duration(self.interval)")


# ---------------------------------------------------------------- examples and defaults
def test_there_are_examples() -> None:
    names = [p.parent.name for p in EXAMPLES]
    assert {"01-minimal", "02-full", "03-autoscaling"} <= set(names)
    for p in EXAMPLES:
        assert (p.parent / "README.md").is_file(), f"{p.parent} has no README.md"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_validates_structurally(path: Path) -> None:
    doc = _doc(path)
    assert doc["apiVersion"] == "perfpilot.io/v1alpha1"
    assert validate(doc, SCHEMA) == []
    defaulted = apply_defaults(doc, SCHEMA)
    assert validate(defaulted, SCHEMA) == []
    spec = defaulted["spec"]
    # The nested defaults appear even when the parent object was not written.
    assert spec["heartbeat"] is not None and spec["pools"]["processWorkers"] is not None
    assert spec["cache"]["ttl"] and spec["kernels"]["parallel"] in (True, False)
    assert spec["resources"]["sidecar"]["requests"]["cpu"]


def test_full_example_sets_every_spec_field() -> None:
    doc = _doc(ROOT / "examples" / "02-full" / "perfprofile.yaml")

    def values(node: Any, parts: list[str]) -> list[Any]:
        if not parts:
            return [node]
        head, rest = parts[0], parts[1:]
        if head == "[]":
            return [v for item in (node or []) for v in values(item, rest)]
        if isinstance(node, dict) and head in node:
            return values(node[head], rest)
        return []

    unset = [path for path, _ in properties(SPEC)
             if not values(doc["spec"], re.findall(r"[^.\[\]]+|\[\]", path))]
    assert not unset, unset


def test_minimal_example_defaults() -> None:
    doc = apply_defaults(_doc(ROOT / "examples" / "01-minimal" / "perfprofile.yaml"), SCHEMA)
    assert doc["spec"] == {
        "selector": {"matchLabels": {"app": "agent"}},
        "resources": {"sidecar": {"requests": {"cpu": "50m", "memory": "192Mi"},
                                  "limits": {"cpu": "1", "memory": "640Mi"}},
                      "sharedMemory": "1Gi"},
        # No schema default for the pairs' members (heartbeat, maxQueue/batchSize): the API server
        # defaults before CEL, so a default would take part in the pair's check; the contract's
        # conversion fills them (tests/contract/test_crd_contract.py).
        "heartbeat": {},
        "pools": {"processWorkers": 2, "threadWorkers": 8, "batchWait": "10ms"},
        "cache": {"ttl": "5m", "maxEntries": 10000,
                  "l1": {"enabled": False, "maxEntries": 1000, "maxBytes": 16 << 20, "ttl": "10s",
                         "maxValueBytes": 64 << 10}},
        "kernels": {"warm": [], "parallel": True},
    }


def test_every_default_validates_against_its_schema() -> None:
    bad = []
    for path, sub in walk(SCHEMA):
        if "default" in sub:
            errs = validate(apply_defaults(sub["default"], sub), sub, path)
            bad += errs
    assert not bad, bad


def test_the_walker_is_not_vacuous() -> None:
    """The structural checker catches what it claims to (so the example tests mean something)."""
    base = _doc(ROOT / "examples" / "02-full" / "perfprofile.yaml")
    cases = {
        "spec.foo": lambda d: d["spec"].__setitem__("foo", 1),
        "spec.pools.processWorkers": lambda d: d["spec"]["pools"].__setitem__("processWorkers", 65),
        "spec.alerts[0].op": lambda d: d["spec"]["alerts"][0].__setitem__("op", "="),
        "spec.heartbeat.interval": lambda d: d["spec"]["heartbeat"].__setitem__("interval", "1d"),
        "spec.autoscaling.tolerance":
            lambda d: d["spec"]["autoscaling"].__setitem__("tolerance", 1),
        "spec.selector": lambda d: d["spec"].pop("selector"),
        "spec.alerts": lambda d: d["spec"]["alerts"].append(dict(d["spec"]["alerts"][0])),
        "spec.kernels.warm": lambda d: d["spec"]["kernels"].__setitem__("warm", ["a", "a"]),
        "spec.resources.app.requests.cpu":
            lambda d: d["spec"]["resources"]["app"]["requests"].__setitem__("cpu", 1.5),
    }
    for field_path, mutate in cases.items():
        doc = copy.deepcopy(base)
        mutate(doc)
        errs = validate(doc, SCHEMA)
        assert any(e.startswith(field_path) for e in errs), (field_path, errs)


# ---------------------------------------------------------------- printer columns
def _column_schema(json_path: str) -> Schema | None:
    # `.status.conditions[?(@.type=="Ready")].status` -> status.conditions[].status
    simple = re.sub(r"\[\?\(@\.[^)]*\)\]|\[\*\]", "[]", json_path).lstrip(".")
    return resolve(SCHEMA, simple)


def test_printer_columns_resolve_in_the_schema() -> None:
    (version,) = CRD["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    assert names[0] == "Ready" and names[-1] == "Age"
    default_view = [c["name"] for c in columns if c.get("priority", 0) == 0]
    assert default_view == ["Ready", "Selected", "Injected", "Configured", "Replicas", "Alerts",
                            "Age"]
    for col in columns:
        if col["jsonPath"] == ".metadata.creationTimestamp":
            assert col["type"] == "date"
            continue
        sub = _column_schema(col["jsonPath"])
        assert sub is not None, col
        assert col["description"], col
        assert col["type"] == sub["type"], (col, sub["type"])
    # The filters refer to values the schema allows.
    conds = resolve(SCHEMA, "status.conditions[]")
    assert conds is not None and conds["properties"]["status"]["enum"] == ["True", "False",
                                                                           "Unknown"]
    alerts = resolve(SCHEMA, "status.activeAlerts[].state")
    assert alerts is not None and "firing" in alerts["enum"]


# ---------------------------------------------------------------- packaging
def test_chart_copy_is_identical_when_present() -> None:
    chart_copy = ROOT / "charts" / "perfpilot" / "crds" / "perfprofile.yaml"
    if not chart_copy.exists():
        pytest.skip("the chart does not ship crds/perfprofile.yaml yet")
    assert chart_copy.read_bytes() == CRD_PATH.read_bytes()


# ---------------------------------------------------------------- docs
def test_reference_doc_is_fresh() -> None:
    import crd_reference

    current = crd_reference.DOC.read_text(encoding="utf-8")
    assert crd_reference.splice(current, crd_reference.render()) == current, (
        "docs/crd-reference.md is stale: run python tests/crd/crd_reference.py")


def test_reference_doc_mentions_every_field() -> None:
    text = (ROOT / "docs" / "crd-reference.md").read_text(encoding="utf-8")
    missing = [p for p, _ in properties(SCHEMA)
               if p not in {"apiVersion", "kind", "metadata", "spec", "status"}
               and f"`{p}`" not in text]
    assert not missing, missing
