"""The operator's pod watch is filtered by the API server, and the coverage audit LISTs only a
profile's pods that did not opt in; both feed one namespace -> [(labels, PodView)] mapping."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kopf._cogs.structs.references import Resource

from perfpilot_operator.handlers import indexes
from perfpilot_operator.logic.selectors import WATCH_SELECTOR, audit_query, to_query


def test_selector_query_covers_every_operator() -> None:
    sel = {"matchLabels": {"tier": "web", "app": "a"},
           "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b", "a"]},
                                {"key": "track", "operator": "NotIn", "values": ["canary"]},
                                {"key": "team", "operator": "Exists"},
                                {"key": "legacy", "operator": "DoesNotExist"}]}
    assert to_query(sel) == "app=a,tier=web,zone in (a,b),track notin (canary),team,!legacy"
    assert audit_query({"matchLabels": {"app": "a"}}) == "app=a,perfpilot.io/inject!=true"


def test_selector_query_refuses_what_would_select_everything() -> None:
    with pytest.raises(ValueError, match="empty selector"):
        to_query({})
    with pytest.raises(ValueError, match="unknown operator 'Near'"):
        to_query({"matchExpressions": [{"key": "k", "operator": "Near"}]})


def test_watches_are_filtered_server_side() -> None:
    settings = kopf.OperatorSettings()
    indexes.filter_watches(settings)
    selectors = settings.watching.label_selectors

    def collected(group: str, version: str, plural: str) -> list[str]:
        return list(selectors.collect(Resource(group, version, plural, namespaced=True)))

    assert collected("", "v1", "pods") == [WATCH_SELECTOR]
    assert collected("apps", "v1", "replicasets") == [WATCH_SELECTOR]
    # Profiles, HPAs and pod metrics are watched whole.
    assert collected("perfpilot.io", "v1alpha1", "perfprofiles") == []
    assert collected("autoscaling", "v2", "horizontalpodautoscalers") == []
    assert collected("metrics.k8s.io", "v1beta1", "pods") == []


def _pod(name: str, labels: dict[str, str], *, injected: bool = False) -> dict[str, Any]:
    containers = [{"name": "app"}] + ([{"name": "perfpilot-agent"}] if injected else [])
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels,
                         "annotations": {"perfpilot.io/injected": "true"} if injected else {}},
            "spec": {"containers": containers},
            "status": {"phase": "Running", "podIP": "127.0.0.9"}}


class FakeCore:
    """CoreV1Api.list_namespaced_pod answering from a list of pods, filtering matchLabels-style
    equality and `!=` terms as the API server would; records every query."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods, self.queries = pods, []  # type: list[dict[str, Any]], list[str]

    def list_namespaced_pod(self, namespace: str, *, label_selector: str, **_: Any) -> Any:
        self.queries.append(label_selector)

        def ok(labels: dict[str, str]) -> bool:
            for term in label_selector.split(","):
                if "!=" in term:
                    k, v = term.split("!=")
                    if labels.get(k) == v:
                        return False
                else:
                    k, v = term.split("=")
                    if labels.get(k) != v:
                        return False
            return True
        items = [p for p in self.pods if ok(p["metadata"]["labels"])]
        return SimpleNamespace(data=json.dumps({"items": items}).encode())


def test_covered_pods_merge_the_watch_with_the_audit_and_audit_at_their_cadence() -> None:
    opted = _pod("opted", {"app": "a", "perfpilot.io/inject": "true"}, injected=True)
    plain = _pod("plain", {"app": "a"})
    other = _pod("other", {"app": "b"})
    watched = {"ns": [indexes.pod_entry("ns", "opted", opted)]}
    covered = indexes.CoveredPods(watched, None)
    covered.core = FakeCore([opted, plain, other])  # type: ignore[assignment]
    profiles = {"ns": [{"metadata": {"name": "p"}, "spec": {"selector": {"matchLabels":
                                                                           {"app": "a"}}}}]}
    assert [v.name for _, v in covered.get("ns", [])] == ["opted"]
    assert asyncio.run(covered.audit(profiles, interval=3600)) == 1
    views = {v.name: v for _, v in covered.get("ns", [])}
    assert set(views) == {"opted", "plain"}          # "other" is not selected
    assert views["opted"].injected and not views["plain"].injected
    assert covered.core.queries == ["app=a,perfpilot.io/inject!=true"]  # type: ignore[attr-defined]
    # Not due again within the interval; a changed selector is audited at once.
    assert asyncio.run(covered.audit(profiles, interval=3600)) == 0
    profiles["ns"][0]["spec"]["selector"] = {"matchLabels": {"app": "b"}}
    assert asyncio.run(covered.audit(profiles, interval=3600)) == 1
    assert {v.name for _, v in covered.get("ns", [])} == {"opted", "other"}
    # A deleted profile's finds go with it.
    assert asyncio.run(covered.audit({}, interval=3600)) == 0
    assert {v.name for _, v in covered.get("ns", [])} == {"opted"}
    assert list(covered) == ["ns"] and covered.get("elsewhere") is None
