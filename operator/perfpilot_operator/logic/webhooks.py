"""The webhook configurations the API server needs, rendered as plain dicts.

We render them ourselves instead of letting kopf manage them: kopf cannot set a
namespaceSelector, and the operator's own namespace must never reach the pod webhook. The Helm
chart renders the same objects with a Service reference.
"""

from __future__ import annotations

import base64
from typing import Any

from perfpilot_operator.logic.injection import OPT_IN_LABEL

MUTATING_NAME = "perfpilot-pod-injector"
VALIDATING_NAME = "perfpilot-profile-validator"
POD_HANDLER_ID = "inject-sidecar"
PROFILE_HANDLER_ID = "validate-profile"


def client_config(*, path: str, ca_bundle: bytes, url_host: str | None = None,
                  port: int = 9443, service: str = "") -> dict[str, Any]:
    """By Service ('namespace/name') in-cluster, else by URL on the host the API server reaches."""
    cfg: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
    if service:
        ns, name = service.split("/", 1)
        cfg["service"] = {"namespace": ns, "name": name, "path": f"/{path}", "port": port}
    else:
        cfg["url"] = f"https://{url_host}:{port}/{path}"
    return cfg


def mutating_configuration(*, operator_namespace: str, failure_policy: str,
                           client: dict[str, Any], exclude_namespaces: tuple[str, ...] = ()
                           ) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_NAME,
                     "labels": {"app.kubernetes.io/part-of": "perfpilot"}},
        "webhooks": [{
            "name": "pods.perfpilot.io",
            "clientConfig": client,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                       "operations": ["CREATE"], "scope": "Namespaced"}],
            # Only pods that opt in, never the operator's own namespace (nor excluded ones).
            "objectSelector": {"matchLabels": {OPT_IN_LABEL: "true"}},
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": sorted({operator_namespace, *exclude_namespaces})}]},
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
        }],
    }


def validating_configuration(*, failure_policy: str, client: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_NAME,
                     "labels": {"app.kubernetes.io/part-of": "perfpilot"}},
        "webhooks": [{
            "name": "perfprofiles.perfpilot.io",
            "clientConfig": client,
            "rules": [{"apiGroups": ["perfpilot.io"], "apiVersions": ["v1alpha1"],
                       "resources": ["perfprofiles"], "operations": ["CREATE", "UPDATE"],
                       "scope": "Namespaced"}],
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
        }],
    }
