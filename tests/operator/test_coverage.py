"""The coverage audit's advice (re-create, never "label" a labelled pod) and the watchdog's rule."""

from __future__ import annotations

from perfpilot_operator.logic.coverage import Uninjected, advice, watchdog_due, workload

WEB = ("Deployment", "web")


def test_a_pod_of_a_deployment_is_found_through_its_replicaset() -> None:
    assert workload(("ReplicaSet", "web-5d8f"), WEB) == WEB
    assert workload(("ReplicaSet", "solo-rs"), None) == ("ReplicaSet", "solo-rs")
    assert workload(("StatefulSet", "db"), None) == ("StatefulSet", "db")
    assert workload(None, None) is None
    # A ReplicaSet outside the watch: the Deployment controller's naming, with the pod's hash.
    assert workload(("ReplicaSet", "web-5d8f"), None, "5d8f") == WEB
    assert workload(("ReplicaSet", "web-5d8f"), None, "77aa") == ("ReplicaSet", "web-5d8f")
    assert workload(("ReplicaSet", "-5d8f"), None, "5d8f") == ("ReplicaSet", "-5d8f")


def test_advice_restarts_the_workload_of_labelled_pods() -> None:
    text = advice([Uninjected("web-1", True, WEB), Uninjected("web-2", True, WEB),
                   Uninjected("db-0", True, ("StatefulSet", "db"))])
    assert text == ("kubectl rollout restart deployment/web; "
                    "kubectl rollout restart statefulset/db")
    assert "label" not in text


def test_advice_for_unlabelled_workloads_bare_pods_and_plain_replicasets() -> None:
    text = advice([Uninjected("api-1", False, ("Deployment", "api")),
                   Uninjected("solo", True, None), Uninjected("loose", False, None),
                   Uninjected("rs-x", True, ("ReplicaSet", "rs"))])
    assert "delete the pods of replicaset/rs (ReplicaSet re-creates them)" in text
    assert ("add the label perfpilot.io/inject=true to the pod template of deployment/api "
            "(the webhook sees only opted-in pods") in text
    assert "delete and re-create pod loose, solo (with the label perfpilot.io/inject=true)" in text
    assert "rollout restart deployment/api" not in text     # it would come back uninjected


def test_watchdog_restarts_opted_in_deployments_at_most_once_per_interval() -> None:
    pods = [Uninjected("web-1", True, WEB), Uninjected("api-1", False, ("Deployment", "api")),
            Uninjected("solo", True, None), Uninjected("db-0", True, ("StatefulSet", "db"))]
    assert watchdog_due(pods, {}, now=1000.0, every=600.0) == ["web"]
    assert watchdog_due(pods, {"web": 900.0}, now=1000.0, every=600.0) == []
    assert watchdog_due(pods, {"web": 400.0}, now=1000.0, every=600.0) == ["web"]
    assert watchdog_due([], {}, now=1000.0, every=600.0) == []
