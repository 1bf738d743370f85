"""In-memory indexes kopf keeps current from watches; handlers read them instead of listing."""

from __future__ import annotations

from typing import Any

import kopf

from perfpilot_operator.logic.conditions import PodView, Refusal, refusal
from perfpilot_operator.logic.injection import ANNOTATION_INJECTED, OPT_IN_LABEL, is_injected


@kopf.index("perfpilot.io", "v1alpha1", "perfprofiles")  # type: ignore[arg-type]  # kopf-kwargs
def profiles_by_namespace(namespace: str, name: str, body: kopf.Body, **_: Any
                          ) -> dict[str, dict[str, Any]]:
    meta = body.get("metadata", {})
    # Everything a resync pass reads (it walks this index instead of listing the profiles):
    # the identity its Events and PrometheusRule owner reference need, spec, status.
    return {namespace: {"apiVersion": body.get("apiVersion", "perfpilot.io/v1alpha1"),
                        "kind": body.get("kind", "PerfProfile"),
                        "metadata": {"name": name, "namespace": namespace,
                                     "uid": meta.get("uid", ""),
                                     "resourceVersion": meta.get("resourceVersion", ""),
                                     "generation": meta.get("generation", 0),
                                     "creationTimestamp": meta.get("creationTimestamp", ""),
                                     "deletionTimestamp": meta.get("deletionTimestamp")},
                        "spec": dict(body.get("spec", {})),
                        "status": dict(body.get("status") or {})}}


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
        owner=next(((o.get("kind", ""), o.get("name", "")) for o in meta.get("ownerReferences") or []
                    if o.get("controller")), None),
        opted_in=(meta.get("labels") or {}).get(OPT_IN_LABEL) == "true",
        template_hash=(meta.get("labels") or {}).get("pod-template-hash"),
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


@kopf.index("apps", "v1", "replicasets")  # type: ignore[arg-type]  # kopf-kwargs
def replicaset_owners(namespace: str, name: str, body: kopf.Body, **_: Any
                      ) -> dict[tuple[str, str], tuple[str, str]]:
    """(namespace, ReplicaSet) -> its controller ("Deployment", name): the coverage audit names
    the workload to restart without reading ReplicaSets (the watch above is shared)."""
    owner = next(((o.get("kind", ""), o.get("name", ""))
                  for o in body.get("metadata", {}).get("ownerReferences") or []
                  if o.get("controller")), None)
    return {(namespace, name): owner} if owner is not None else {}
