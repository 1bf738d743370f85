"""The webhook configurations the API server needs, rendered as plain dicts.

We render them ourselves instead of letting kopf manage them: kopf cannot set a
namespaceSelector, and the operator's own namespace must never reach the pod webhook. The Helm
chart renders the same objects with a Service reference (charts/perfpilot/templates/
webhookconfigurations.yaml; tests/chart checks that the two agree field by field): this module
is the reference. Every field the API server would default is set here, so that a stored
configuration equals its rendering exactly unless someone changed it (`drift`).

When no replica answers, the API server refuses a call as `failed calling webhook "<name>":
failed to call webhook: Post "https://<service>.<namespace>.svc:<port>/<path>?timeout=5s": ...`:
the names and paths are chosen so that this message says what is down and what to check.
"""

from __future__ import annotations

import base64
from typing import Any

from perfpilot_operator.logic.injection import OPT_IN_LABEL

MUTATING_NAME = "perfpilot-pod-injector"
VALIDATING_NAME = "perfpilot-profile-validator"
# The URL paths (kopf routes /<handler id> to the handler of that id).
POD_HANDLER_ID = "perfpilot-sidecar-injector-unavailable-check-operator-pods"
PROFILE_HANDLER_ID = "perfpilot-profile-validator-unavailable-check-operator-pods"
POD_WEBHOOK = "sidecar-injector.perfpilot.io"
PROFILE_WEBHOOK = "profile-validator.perfpilot.io"
LABELS = {"app.kubernetes.io/part-of": "perfpilot"}


def client_config(*, path: str, ca_bundle: bytes, url_host: str | None = None,
                  port: int = 9443, service: str = "") -> dict[str, Any]:
    """By Service ('namespace/name') in-cluster, else by URL on the host the API server reaches.
    No caBundle when there is none yet (the chart's rendering: the operator patches it in)."""
    cfg: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()} if ca_bundle else {}
    if service:
        ns, name = service.split("/", 1)
        cfg["service"] = {"namespace": ns, "name": name, "path": f"/{path}", "port": port}
    else:
        cfg["url"] = f"https://{url_host}:{port}/{path}"
    return cfg


def namespace_selector(excluded: tuple[str, ...], labels: dict[str, str] | None = None
                       ) -> dict[str, Any]:
    """Never the excluded namespaces; only namespaces carrying `labels` when given."""
    sel: dict[str, Any] = {}
    if labels:
        sel["matchLabels"] = dict(sorted(labels.items()))
    if excluded:
        sel["matchExpressions"] = [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                    "values": sorted(set(excluded))}]
    return sel


def mutating_configuration(*, operator_namespace: str, failure_policy: str,
                           client: dict[str, Any], exclude_namespaces: tuple[str, ...] = (),
                           namespace_labels: dict[str, str] | None = None,
                           name: str = MUTATING_NAME) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "webhooks": [{
            "name": POD_WEBHOOK,
            "clientConfig": client,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                       "operations": ["CREATE"], "scope": "Namespaced"}],
            # Only pods that opt in, never the operator's own namespace (nor excluded ones).
            "objectSelector": {"matchLabels": {OPT_IN_LABEL: "true"}},
            "namespaceSelector": namespace_selector((operator_namespace, *exclude_namespaces),
                                                    namespace_labels),
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
        }],
    }


def validating_configuration(*, failure_policy: str, client: dict[str, Any],
                             namespace_labels: dict[str, str] | None = None,
                             name: str = VALIDATING_NAME) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "webhooks": [{
            "name": PROFILE_WEBHOOK,
            "clientConfig": client,
            "rules": [{"apiGroups": ["perfpilot.io"], "apiVersions": ["v1alpha1"],
                       "resources": ["perfprofiles"], "operations": ["CREATE", "UPDATE"],
                       "scope": "Namespaced"}],
            "objectSelector": {},
            "namespaceSelector": namespace_selector((), namespace_labels),
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
        }],
    }


def drift(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """What differs between a stored configuration and its rendering, one line per field
    (`webhooks[sidecar-injector.perfpilot.io].failurePolicy: 'Ignore' -> 'Fail'`); [] when equal."""
    have = {w.get("name"): w for w in current.get("webhooks") or []}
    want = {w["name"]: w for w in desired["webhooks"]}
    out = [f"webhooks[{n}]: added behind the operator's back" for n in sorted(set(have) - set(want))]
    for n, w in want.items():
        if n not in have:
            out.append(f"webhooks[{n}]: missing")
            continue
        for key in sorted(set(w) | set(have[n])):
            was, want_ = have[n].get(key), w.get(key)
            if was == want_:
                continue
            if key == "clientConfig":
                was, want_ = dict(was or {}), dict(want_ or {})
                if was.pop("caBundle", None) != want_.pop("caBundle", None):
                    out.append(f"webhooks[{n}].clientConfig.caBundle: not the operator's CA")
                if was == want_:
                    continue
            out.append(f"webhooks[{n}].{key}: {was!r} -> {want_!r}")
    return out


def restore_patch(current: dict[str, Any], desired: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch that puts the rendered webhooks back, only if nobody wrote meanwhile
    (the `test` of resourceVersion makes a concurrent edit fail instead of being overwritten
    blindly; the next resync looks again)."""
    return [{"op": "test", "path": "/metadata/resourceVersion",
             "value": current["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/webhooks", "value": desired["webhooks"]}]
