"""Pod Security admission on the real API server: a namespace that enforces `restricted`
admits injected pods of a compliant app (the injected sidecar complies by itself), and a profile
whose pods are refused says so (InjectionComplete/Ready False, reason PodsRefused, the API
server's message, an Event) instead of reporting Ready."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.harness.cluster import LocalCluster
from e2e.test_operator import PROFILE, get_json, profile_status

pytestmark = pytest.mark.usefixtures("operator")

RESTRICTED = """
        securityContext:
          runAsNonRoot: true
          runAsUser: 1000
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: agent}
spec:
  replicas: 2
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent, perfpilot.io/inject: "true"}}
    spec:
      containers:
      - name: agent
        image: example.invalid/agent:1"""


def restricted_namespace(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace,
                    "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def test_restricted_namespace_admits_injected_pods_of_a_compliant_app(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    restricted_namespace(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT + RESTRICTED)
    st = wait_for(lambda: (s := profile_status(cluster, namespace)).get("pods", {})
                  .get("configured") == 2 and condition(s, "Ready").get("status") == "True"
                  and s, "2 injected pods configured and Ready in a restricted namespace",
                  timeout=90)
    assert condition(st, "InjectionComplete")["reason"] == "AllInjected"
    for pod in get_json(cluster, "pods", "-n", namespace, "-l", "app=agent")["items"]:
        sidecar = next(c for c in pod["spec"]["initContainers"]
                       if c["name"] == "perfpilot-agent")
        assert sidecar["securityContext"]["runAsNonRoot"] is True
        assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True


def test_profile_is_not_ready_while_its_pods_are_refused(
        cluster: LocalCluster, namespace: str, wait_for: Any) -> None:
    restricted_namespace(cluster, namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PROFILE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)   # app not compliant

    def refused() -> dict[str, Any] | None:
        st = profile_status(cluster, namespace)
        return st if condition(st, "InjectionComplete").get("reason") == "PodsRefused" else None

    st = wait_for(refused, "InjectionComplete=False reason PodsRefused", timeout=90)
    cond = condition(st, "InjectionComplete")
    assert cond["status"] == "False"
    # The API server's own words: which policy, which container, which field.
    assert 'violates PodSecurity "restricted:latest"' in cond["message"], cond
    assert 'container "agent"' in cond["message"] and "agent-" in cond["message"], cond
    # The injected sidecar is never the culprit.
    assert "perfpilot-agent" not in cond["message"], cond
    assert condition(st, "Ready")["status"] == "False"
    assert get_json(cluster, "pods", "-n", namespace)["items"] == []
    events = wait_for(lambda: get_json(cluster, "events", "-n", namespace, "--field-selector",
                                       "involvedObject.name=agents,reason=PodsRefused"
                                       )["items"], "a PodsRefused event on the profile")
    assert events[0]["type"] == "Warning"
    assert "violates PodSecurity" in events[0]["message"]

    # The fix the message names: the app complies, its pods are admitted, the profile is Ready.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT + RESTRICTED)
    st = wait_for(lambda: (s := profile_status(cluster, namespace)) and condition(s, "Ready")
                  .get("status") == "True" and s, "Ready after the app complies", timeout=90)
    assert condition(st, "InjectionComplete")["reason"] == "AllInjected"
