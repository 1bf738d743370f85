"""Selected pods the API server refuses: what a ReplicaSet's ReplicaFailure condition tells a
profile (pure logic; the e2e proves it against Pod Security admission)."""

from __future__ import annotations

from typing import Any

from perfpilot_operator.logic.conditions import Refusal, refusal, refusal_condition

FORBIDDEN = ('pods "agent-7d9-x" is forbidden: violates PodSecurity "restricted:latest": '
             'allowPrivilegeEscalation != false (container "agent" must set '
             'securityContext.allowPrivilegeEscalation=false)')


def replicaset(replicas: int = 3, conditions: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    return {"metadata": {"name": "agent-7d9", "namespace": "ai"},
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"labels": {"app": "agent"}}}},
            "status": {"conditions": conditions or []}}


FAILURE = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
           "message": FORBIDDEN}


def test_replica_failure_is_a_refusal_with_the_api_servers_words() -> None:
    r = refusal(replicaset(conditions=[FAILURE]))
    assert r == Refusal("agent-7d9", {"app": "agent"}, f"FailedCreate: {FORBIDDEN}")
    assert r is not None and r.labels == {"app": "agent"}


def test_no_refusal_without_the_condition_or_when_scaled_to_zero() -> None:
    assert refusal(replicaset()) is None
    assert refusal(replicaset(conditions=[{**FAILURE, "status": "False"}])) is None
    # An old ReplicaSet of a rollout keeps its last condition after scaling to zero.
    assert refusal(replicaset(replicas=0, conditions=[FAILURE])) is None


def test_condition_names_the_replicasets_and_the_field_to_fix() -> None:
    assert refusal_condition([]) is None
    refusals = [Refusal(f"rs-{i}", {}, f"FailedCreate: msg {i}") for i in (3, 1, 2, 0)]
    reason, message = refusal_condition(refusals) or ("", "")
    assert reason == "PodsRefused"
    assert message.startswith("the API server refuses the pods of 4 ReplicaSet(s); ")
    assert "rs-0: FailedCreate: msg 0; rs-1" in message and "rs-3" not in message
    reason, message = refusal_condition([refusal(replicaset(conditions=[FAILURE]))]) or ("", "")
    assert "securityContext.allowPrivilegeEscalation=false" in message
