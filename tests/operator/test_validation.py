import pytest

from perfpilot_operator.logic.overlap import selectors_overlap
from perfpilot_operator.logic.validation import cross_object_problems


@pytest.mark.parametrize("a, b, overlap", [
    ({"matchLabels": {"app": "a"}}, {"matchLabels": {"app": "a"}}, True),
    ({"matchLabels": {"app": "a"}}, {"matchLabels": {"app": "b"}}, False),
    ({"matchLabels": {"app": "a"}}, {"matchLabels": {"tier": "x"}}, True),   # a pod can have both
    ({"matchLabels": {"app": "a"}},
     {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
     {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b", "c"]}]}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
     {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]},
     {"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["x"]}]}, True),
])
def test_selector_overlap(a: dict, b: dict, overlap: bool) -> None:
    assert selectors_overlap(a, b) is overlap
    assert selectors_overlap(b, a) is overlap


def profile(name: str, selector: dict, **spec: object) -> dict:
    return {"metadata": {"name": name}, "spec": {"selector": selector, **spec}}


def test_overlapping_profile_is_named() -> None:
    p = profile("new", {"matchLabels": {"app": "agent"}})
    problems = cross_object_problems(p, [profile("old", {"matchLabels": {"app": "agent"}})], [])
    assert len(problems) == 1 and "'old'" in problems[0] and "spec.selector" in problems[0]


def test_target_owned_by_an_hpa_is_refused_only_with_autoscaling() -> None:
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent"}
    hpa = {"name": "agent-hpa", "target": {"apiVersion": "apps/v1", "kind": "Deployment",
                                           "name": "agent"}}
    with_scaling = profile("p", {"matchLabels": {"app": "a"}}, target=target,
                           autoscaling={"minReplicas": 1})
    problems = cross_object_problems(with_scaling, [], [hpa])
    assert "'agent-hpa'" in problems[0] and "spec.target" in problems[0]
    assert cross_object_problems(profile("p", {"matchLabels": {"app": "a"}}, target=target),
                                 [], [hpa]) == []
