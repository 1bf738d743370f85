"""A profile's alerts as a Prometheus Operator PrometheusRule over the operator's own metrics.

The operator evaluates the alerts itself (Events, conditions, status); clusters that run the
Prometheus Operator also get the same rules in Prometheus, so Alertmanager routes them like any
other alert. The expressions read perfpilot_operator_profile_metric, the merged value the
operator computed, so both evaluations agree.
"""

from __future__ import annotations

from typing import Any

from perfpilot_operator.logic.alerting import AlertRule

GROUP, VERSION, PLURAL, KIND = "monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule"
METRIC = "perfpilot_operator_profile_metric"


def rule_name(profile: str) -> str:
    return f"perfpilot-{profile}"[:253]


def _duration(seconds: float) -> str:
    """Prometheus duration: whole seconds (the CRD's `for` is validated as a Go duration)."""
    return f"{max(0, round(seconds))}s"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render(profile: dict[str, Any], rules: list[AlertRule]) -> dict[str, Any]:
    """The PrometheusRule object (owned by the profile, so it goes when the profile goes)."""
    meta = profile["metadata"]
    ns, name = meta["namespace"], meta["name"]
    descriptions = {a["name"]: a.get("description", "")
                    for a in (profile.get("spec", {}).get("alerts") or [])}
    alerts = []
    for r in rules:
        selector = (f'namespace="{_label(ns)}",profile="{_label(name)}",'
                    f'metric="{_label(r.metric)}"')
        alert: dict[str, Any] = {
            "alert": r.name,
            "expr": f"{METRIC}{{{selector}}} {r.op} {r.threshold!r}",
            "labels": {"severity": r.severity, "perfpilot_profile": name},
            "annotations": {
                "summary": f"{r.name}: {r.metric} {r.op} {r.threshold:g} "
                           f"(PerfProfile {ns}/{name})",
                "description": descriptions.get(r.name) or
                f"{r.metric} is {{{{ $value }}}}, {r.op} {r.threshold:g}; "
                f"see kubectl describe perfprofile {name} -n {ns}",
            },
        }
        if r.for_seconds > 0:
            alert["for"] = _duration(r.for_seconds)
        alerts.append(alert)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": rule_name(name),
            "namespace": ns,
            "labels": {"app.kubernetes.io/managed-by": "perfpilot",
                       "perfpilot.io/profile": name},
            "ownerReferences": [{
                "apiVersion": "perfpilot.io/v1alpha1", "kind": "PerfProfile", "name": name,
                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": False,
            }],
        },
        "spec": {"groups": [{"name": f"perfpilot.{ns}.{name}", "rules": alerts}]},
    }
