"""`promtool test rules` for every alert perfpilot ships: the chart's own (rendered by helm from
templates/prometheusrule.yaml) and the ones the operator renders from a profile's spec.alerts
(perfpilot_operator.logic.prometheusrule). Input series and expected alerts live in
tests/checks/promtool/*.test.yaml; this module renders the rule files next to them, runs
`promtool check rules` and `promtool test rules`, and fails when an alert has no firing test case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from perfpilot_operator.logic import monitor
from perfpilot_operator.logic.prometheusrule import render as render_profile_rule

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).parent / "promtool"
CHART = ROOT / "charts" / "perfpilot"
HELM = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot")) / "bin" / "helm"
PROMTOOL = shutil.which("promtool")
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: `make debs` installs Debian's prometheus "
                             "package (`make test` does so first)")


def _chart_rules() -> dict[str, Any]:
    if not HELM.exists():
        pytest.skip(f"{HELM} is missing: `make cluster-build` builds it (`make test` does so first)")
    args = [str(HELM), "template", "pp", str(CHART), "-n", "perfpilot-system",
            "--kube-version", "1.35.0",
            "--set", "metrics.serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"]
    for api in MONITORING_APIS:
        args += ["--api-versions", api]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/perfpilot-helm-cache"})
    assert proc.returncode == 0, proc.stderr
    [rule] = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def _profile_rules() -> dict[str, Any]:
    profile = yaml.safe_load((CASES / "profile.yaml").read_text())
    rule = render_profile_rule(profile, monitor.alert_rules(profile["spec"]))
    return {"groups": rule["spec"]["groups"]}


RULES = {"chart": _chart_rules, "profile": _profile_rules}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(params=sorted(RULES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(the test file in a temp dir beside its rendered rule file, the rules, the test file)."""
    name: str = request.param
    rules = RULES[name]()
    test_file = tmp_path / f"{name}.test.yaml"
    shutil.copy(CASES / test_file.name, test_file)
    spec = yaml.safe_load(test_file.read_text())
    [rule_file] = spec["rule_files"]
    (tmp_path / rule_file).write_text(yaml.safe_dump(rules, sort_keys=False))
    return test_file, rules, spec


def test_rules_are_valid_prometheus_rules(case: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    test_file, _, spec = case
    proc = promtool("check", "rules", spec["rule_files"][0], cwd=test_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass(case: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    test_file, _, _ = case
    proc = promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert proc.returncode == 0, f"promtool test rules {test_file.name}:\n{proc.stdout}{proc.stderr}"


def test_every_alert_has_a_firing_and_a_quiet_case(
        case: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    _, rules, spec = case
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    checks = [c for t in spec["tests"] for c in t.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    assert alerts, "no alerts rendered"
    assert alerts <= firing, f"alerts without a test case where they fire: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"alerts without a test case where they stay quiet: {sorted(alerts - quiet)}"
