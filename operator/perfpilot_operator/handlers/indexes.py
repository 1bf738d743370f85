"""In-memory indexes kopf keeps current from watches; handlers read them instead of listing."""

from __future__ import annotations

from typing import Any

import kopf

from perfpilot_operator.logic.conditions import PodView, Refusal, refusal
from perfpilot_operator.logic.injection import ANNOTATION_INJECTED, is_injected


@kopf.index("perfpilot.io", "v1alpha1", "perfprofiles")  # type: ignore[arg-type]  # kopf-kwargs
def profiles_by_namespace(namespace: str, name: str, body: kopf.Body, **_: Any
                          ) -> dict[str, dict[str, Any]]:
    meta = body.get("metadata", {})
    return {namespace: {"metadata": {"name": name, "namespace": namespace,
                                     "generation": meta.get("generation", 0),
                                     "creationTimestamp": meta.get("creationTimestamp", "")},
                        "spec": dict(body.get("spec", {}))}}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")  # type: ignore[arg-type]  # kopf-kwargs
def hpas_by_namespace(namespace: str, name: str, spec: kopf.Spec, **_: Any
                      ) -> dict[str, dict[str, Any]]:
    return {namespace: {"name": name, "target": dict(spec.get("scaleTargetRef", {}))}}


@kopf.index("pods")  # type: ignore[arg-type]  # kopf-kwargs
def pods_by_namespace(namespace: str, name: str, body: kopf.Body, **_: Any
                      ) -> dict[str, tuple[dict[str, str], PodView]]:
    meta, status = body.get("metadata", {}), body.get("status", {})
    spec = body.get("spec", {})
    shape = {"spec": {section: [{"name": c.get("name"), "resources": dict(c.get("resources") or {})}
                                for c in spec.get(section, [])]
                      for section in ("containers", "initContainers")}}
    view = PodView(
        name=name,
        ip=status.get("podIP"),
        running=status.get("phase") == "Running" and not meta.get("deletionTimestamp"),
        injected=is_injected(dict(body))
        and meta.get("annotations", {}).get(ANNOTATION_INJECTED) == "true",
        shape=shape,
    )
    return {namespace: (dict(meta.get("labels") or {}), view)}


@kopf.index("apps", "v1", "replicasets")  # type: ignore[arg-type]  # kopf-kwargs
def refusals_by_namespace(namespace: str, body: kopf.Body, **_: Any
                          ) -> dict[str, Refusal]:
    """ReplicaSets whose pods the API server refuses (Pod Security, quotas, webhooks): the pods
    never exist, so only the ReplicaSet's ReplicaFailure condition tells a profile about them.
    `{}`, not None, when it stops refusing: kopf keeps an object's previous entry on None."""
    found = refusal(dict(body))
    return {namespace: found} if found is not None else {}
