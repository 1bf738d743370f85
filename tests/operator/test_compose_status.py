"""compose_status, table-driven: what one pass found -> the status and its conditions."""

from __future__ import annotations

from typing import Any

import pytest

from perfpilot_operator.logic.conditions import PodView, Refusal
from perfpilot_operator.logic.status import (
    Cond, Observed, Resize, Rollout, compose_status, condition,
)

A, B = PodView("a", "127.1.0.1", True, True), PodView("b", "127.1.0.2", True, True)
PLAIN = PodView("plain", "127.1.0.3", True, False)
AT6 = Rollout(reported={"a": 6, "b": 6})

# (case, pods, rollout, resize, refusals, observed, advice) -> {condition: (status, reason, in message)}
CASES: list[tuple[str, list[PodView], Rollout, Resize, list[Refusal], Observed | None, str,
                  dict[str, tuple[str, str, str]]]] = [
    ("no pods", [], Rollout(), Resize(), [], None, "",
     {"InjectionComplete": ("True", "NoPods", "no running pod"),
      "ConfigApplied": ("True", "NoSidecars", ""), "Ready": ("True", "Reconciled", ""),
      "Degraded": ("False", "AllHealthy", "")}),
    ("all configured", [A, B], AT6, Resize(), [], None, "",
     {"InjectionComplete": ("True", "AllInjected", "all 2"),
      "ConfigApplied": ("True", "AllConfigured", "2/2 sidecars at generation 6"),
      "Ready": ("True", "Reconciled", ""), "ResourcesApplied": ("True", "Applied", "")}),
    ("one behind", [A, B], Rollout(reported={"a": 6, "b": 5}), Resize(), [], None, "",
     {"ConfigApplied": ("False", "RollingOut", "1/2 sidecars at generation 6"),
      "Ready": ("False", "NotReady", "")}),
    ("ahead is not configured", [A, B], Rollout(reported={"a": 6, "b": 2**62}), Resize(), [],
     None, "", {"ConfigApplied": ("False", "RollingOut", "1/2")}),
    ("configure failed", [A, B], Rollout(reported={"a": 6}, failures={"b": "UNAVAILABLE: x"}),
     Resize(), [], None, "",
     {"Degraded": ("True", "SidecarsUnreachable", "b: UNAVAILABLE: x"),
      "Ready": ("False", "NotReady", "")}),
    ("stats unreachable", [A, B], AT6, Resize(), [],
     Observed(unreachable={"b": "DEADLINE_EXCEEDED"}), "",
     {"Degraded": ("True", "SidecarsUnreachable", "1 of 2 sidecar(s) did not answer GetStats"),
      # b's answer to Configure counts, not the missing GetStats: it is configured.
      "ConfigApplied": ("True", "AllConfigured", "2/2")}),
    ("uninjected, with the advice", [A, PLAIN], Rollout(reported={"a": 6}), Resize(), [], None,
     "kubectl rollout restart deployment/web",
     {"InjectionComplete": ("False", "PodsWithoutSidecar",
                            "re-create them: kubectl rollout restart deployment/web"),
      "Ready": ("False", "NotReady", "")}),
    ("refused", [A], Rollout(reported={"a": 6}), Resize(),
     [Refusal("web-1", {}, "FailedCreate: forbidden")], None, "",
     {"InjectionComplete": ("False", "PodsRefused", "web-1: FailedCreate: forbidden")}),
    ("stale, no resize API", [A], Rollout(reported={"a": 6}),
     Resize(stale={"a": "no pods/resize"}, supported=False), [], None, "",
     {"ResourcesApplied": ("False", "PodsStale", "no pods/resize before 1.33")}),
    ("resized", [A], Rollout(reported={"a": 6}), Resize(resized=1), [], None, "",
     {"ResourcesApplied": ("True", "ResizedInPlace", "1 running pod(s)")}),
    ("observed conditions", [A], Rollout(reported={"a": 6}), Resize(), [],
     Observed(conditions=(Cond("ScalingActive", False, "MetricsIncomplete", "holding 3"),
                          Cond("Alerting", True, "AlertsFiring", "slow"))), "",
     {"ScalingActive": ("False", "MetricsIncomplete", "holding 3"),
      "Alerting": ("True", "AlertsFiring", "slow"), "Ready": ("True", "Reconciled", "")}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conditions(case: Any) -> None:
    _, pods, rollout, resize, refusals, observed, advice, want = case
    status = compose_status(generation=6, previous={}, pods=pods, rollout=rollout, resize=resize,
                            refusals=refusals, observed=observed, coverage_advice=advice, now="t")
    for type_, (value, reason, text) in want.items():
        c = condition(status, type_)
        assert (c.get("status"), c.get("reason")) == (value, reason), c
        assert text in c["message"], c
        assert c["observedGeneration"] == 6
    assert status["observedGeneration"] == 6


def test_pod_counts_are_what_the_sidecars_reported() -> None:
    status = compose_status(generation=6, previous={}, pods=[A, B, PLAIN],
                            rollout=Rollout(reported={"a": 6, "b": 0}), resize=Resize(stale={"a": "x"}),
                            refusals=[], observed=Observed(unreachable={"b": "UNAVAILABLE"}))
    assert status["pods"] == {"selected": 3, "injected": 2, "configured": 1, "unhealthy": 1,
                              "uninjected": 1, "stale": 1}


def test_transition_time_moves_only_on_a_flip_and_observed_status_is_merged() -> None:
    first = compose_status(generation=6, previous={}, pods=[A], rollout=Rollout(reported={"a": 5}),
                           resize=Resize(), refusals=[], observed=None, now="t1")
    again = compose_status(generation=6, previous=first, pods=[A],
                           rollout=Rollout(reported={"a": 5}), resize=Resize(), refusals=[],
                           observed=Observed(status={"activeAlerts": []}), now="t2")
    assert condition(again, "Ready")["lastTransitionTime"] == "t1"
    assert again["activeAlerts"] == []
    flipped = compose_status(generation=6, previous=again, pods=[A], rollout=AT6,
                             resize=Resize(), refusals=[], observed=None, now="t3")
    assert condition(flipped, "Ready")["lastTransitionTime"] == "t3"
    assert condition(flipped, "ConfigApplied")["status"] == "True"
