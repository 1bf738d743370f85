"""kubeconform (strict) on everything perfpilot hands to an API server: the chart as Helm renders
it, every manifest in examples/, and a pod as the injection webhook patches it.

Schemas are made here (tests/peers/schemas.py): built-in kinds from the OpenAPI spec of the
pinned Kubernetes version, PerfProfile from crds/perfprofile.yaml, PrometheusRule from the e2e
stand-in CRD. Strict: an unknown or misspelt field is an error, as with `kubectl apply
--validate=strict`.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from perfpilot_operator.logic.injection import SidecarTemplate, inject
from tests.peers.conftest import CACHE, ROOT, peer
from tests.peers.schemas import LOCATION, builtin_schemas, crd_schemas

K8S_VERSION = next(line.split("=", 1)[1] for line in
                   (ROOT / "e2e/build-control-plane.sh").read_text().splitlines()
                   if line.startswith("K8S_VERSION="))
SWAGGER = CACHE / "k8s-openapi" / f"v{K8S_VERSION}" / "swagger.json"
CRDS = (ROOT / "crds/perfprofile.yaml", ROOT / "e2e/fixtures/prometheusrule-crd.yaml")
# No schema for these here: the Prometheus Operator's CRDs are not in this repository (e2e has a
# stand-in for PrometheusRule only). Their rendering is checked by tests/chart/test_chart.py.
NO_SCHEMA = ("ServiceMonitor", "PodMonitor")
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SWAGGER.exists():
        pytest.skip(f"{SWAGGER} is missing: run `make peers` (bash scripts/ensure-peers.sh "
                    "k8s-openapi); `make test` does it first")
    out = tmp_path_factory.mktemp("schemas")
    assert builtin_schemas(SWAGGER, out) > 100
    for crd in CRDS:
        crd_schemas(yaml.safe_load(crd.read_text()), out)
    return out


def kubeconform(schemas: Path, *files: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate; returns kubeconform's JSON summary, failing the test with its findings."""
    args = [str(peer("kubeconform")), "-strict", "-summary", "-output", "json",
            "-kubernetes-version", K8S_VERSION, "-schema-location", f"{schemas}/{LOCATION}"]
    if skip:
        args += ["-skip", ",".join(skip)]
    proc = subprocess.run([*args, *map(str, files)], capture_output=True, text=True, timeout=60)
    report: dict[str, Any] = json.loads(proc.stdout)
    bad = [r for r in report.get("resources", []) if r["status"] != "statusSkipped"]
    assert proc.returncode == 0, "kubeconform found:\n" + "\n".join(
        f"  {r['filename']}: {r['kind']} {r['name']}: {r['msg']}" for r in bad)
    return report


def test_chart_with_default_values_is_valid(schemas: Path, chart_default: Path) -> None:
    summary = kubeconform(schemas, chart_default)["summary"]
    assert summary["valid"] >= 8 and summary["skipped"] == 0, summary


def test_chart_with_every_optional_feature_is_valid(schemas: Path, chart_full: Path) -> None:
    kinds = [d["kind"] for d in yaml.safe_load_all(chart_full.read_text()) if d]
    assert "PrometheusRule" in kinds and all(k in kinds for k in NO_SCHEMA), kinds
    summary = kubeconform(schemas, chart_full, skip=NO_SCHEMA)["summary"]
    assert summary["skipped"] == sum(k in NO_SCHEMA for k in kinds), summary
    assert summary["valid"] == len(kinds) - summary["skipped"], summary


def test_examples_are_valid(schemas: Path) -> None:
    assert EXAMPLES, "no manifests in examples/"
    docs = [d for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d]
    summary = kubeconform(schemas, *EXAMPLES)["summary"]
    assert summary["valid"] == len(docs) and summary["skipped"] == 0, summary


def patched(pod: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The pod after the webhook's patch (kopf merges dicts, replaces lists)."""
    out = copy.deepcopy(pod)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = {**node[leaf], **value} if isinstance(value, dict) and leaf in node else value
    return out


def injected_pod(out: Path, native: bool = True) -> Path:
    """The example Deployment's pod template, injected with the example profile (every field),
    written as a Pod manifest to `out`."""
    deployment = yaml.safe_load((ROOT / "examples/02-full/deployment.yaml").read_text())
    profile = yaml.safe_load((ROOT / "examples/02-full/perfprofile.yaml").read_text())
    profile["metadata"].update(namespace="team-a", generation=2)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "agent-1", "namespace": "team-a",
                        **deployment["spec"]["template"]["metadata"]},
           "spec": deployment["spec"]["template"]["spec"]}
    injection = inject(pod, profile, SidecarTemplate(native_sidecar=native))
    assert not injection.empty and not injection.warnings, injection
    out.write_text(yaml.safe_dump(patched(pod, injection.changes)))
    return out


@pytest.mark.parametrize("native", [True, False], ids=["native-sidecar", "regular-container"])
def test_injected_pod_is_a_valid_pod(schemas: Path, tmp_path: Path, native: bool) -> None:
    out = injected_pod(tmp_path / "pod.yaml", native)
    assert kubeconform(schemas, out)["summary"]["valid"] == 1


BROKEN = [
    # (what is wrong, manifest): each must be refused, or the checks above prove nothing.
    ("unknown container field", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                 "spec": {"containers": [{"name": "c", "image": "i", "imagePolicy": "x"}]}}),
    ("port as a list", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": [1]}]}]}}),
    ("misspelt PerfProfile field", {"apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile",
                                    "metadata": {"name": "p"},
                                    "spec": {"selector": {"matchLabels": {"a": "b"}}, "pool": {}}}),
    ("PerfProfile enum", {"apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile",
                          "metadata": {"name": "p"},
                          "spec": {"selector": {"matchLabels": {"a": "b"}}, "kernels": {"warm": ["nope"]}}}),
]


@pytest.mark.parametrize(("what", "manifest"), BROKEN, ids=[b[0] for b in BROKEN])
def test_schemas_refuse_broken_manifests(schemas: Path, tmp_path: Path, what: str,
                                         manifest: dict[str, Any]) -> None:
    out = tmp_path / "broken.yaml"
    out.write_text(yaml.safe_dump(manifest))
    with pytest.raises(AssertionError, match="kubeconform found"):
        kubeconform(schemas, out)
