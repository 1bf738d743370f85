"""Honest status: which generation a sidecar runs is what it reported in this pass (issue 11)."""

from perfpilot_operator.logic.conditions import PodView, count_pods
from perfpilot_operator.logic.readback import to_configure, with_reports

PODS = [PodView("same", "127.1.0.1", True, True), PodView("restarted", "127.1.0.2", True, True),
        PodView("ahead", "127.1.0.3", True, True), PodView("unread", "127.1.0.4", True, True),
        PodView("down", "127.1.0.5", True, True), PodView("plain", "127.1.0.6", True, False),
        PodView("pending", None, False, True)]


def test_every_sidecar_not_reporting_the_generation_is_configured_again() -> None:
    # A restarted sidecar (same pod, same IP) reports its admission-time generation 0; one
    # pushed from inside the pod reports a generation the profile never had.
    reported = {"same": 6, "restarted": 0, "ahead": 2**62}
    todo = to_configure(PODS, reported, 6, unreachable={"down": "UNAVAILABLE"})
    assert [p.name for p in todo] == ["restarted", "ahead", "unread"]
    # Without a GetStats round (a spec change, a start) everyone is sent the generation.
    assert [p.name for p in to_configure(PODS, {}, 6)] == [
        "same", "restarted", "ahead", "unread", "down"]


def test_configured_counts_only_sidecars_reporting_the_current_generation() -> None:
    reported = {"same": 6, "restarted": 0, "ahead": 2**62, "down": 6}
    views = with_reports(PODS, reported, unhealthy={"down"})
    assert {p.name: p.configured_generation for p in views}["unread"] == 0
    counts = count_pods(views, 6)
    # "down" reported 6 but is unhealthy: still counted configured (its config is right), and
    # unhealthy; "ahead" runs a config that is not the profile's: not configured.
    assert counts.as_status() == {"selected": 6, "injected": 5, "configured": 2,
                                  "unhealthy": 1, "uninjected": 1}
    # Nothing is remembered between passes: a pass where the restarted sidecar answers again
    # at 0 counts it unconfigured even though an earlier pass configured it.
    again = count_pods(with_reports(PODS, {**reported, "restarted": 0}, ()), 6)
    assert again.configured == 2
