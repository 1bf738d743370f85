"""Cross-object rules for PerfProfiles that the CRD schema cannot state."""

from __future__ import annotations

from typing import Any

from perfpilot_operator.logic.overlap import selectors_overlap


def cross_object_problems(profile: dict[str, Any], others: list[dict[str, Any]],
                          hpas: list[dict[str, Any]]) -> list[str]:
    """Messages naming the other object; empty when the profile may be admitted."""
    spec = profile.get("spec", {})
    problems = []
    for other in others:
        if selectors_overlap(spec.get("selector", {}), other.get("spec", {}).get("selector", {})):
            problems.append(
                f"spec.selector overlaps PerfProfile {other['metadata']['name']!r} in this "
                f"namespace: a pod must be governed by one profile; make the selectors disjoint "
                f"(e.g. add a distinguishing label)")
    target = spec.get("target") or {}
    if spec.get("autoscaling") and target:
        for hpa in hpas:
            ref = hpa.get("target", {})
            if (ref.get("kind") == target.get("kind") and ref.get("name") == target.get("name")
                    and ref.get("apiVersion", "").split("/")[0]
                    == target.get("apiVersion", "").split("/")[0]):
                problems.append(
                    f"spec.target {target.get('kind')}/{target.get('name')} is already scaled "
                    f"by HorizontalPodAutoscaler {hpa['name']!r}: remove spec.autoscaling or "
                    f"the HPA, so that one owner sets replicas")
    return problems
