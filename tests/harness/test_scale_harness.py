"""The scale harness's pure parts: node sizing, the API server's counter parsing, which pods the
agent fleet hosts, and how the benchmark turns the fleet's record into a pass duration."""

from __future__ import annotations

import math
from typing import Any

from bench.scale_bench import resync_ticks, sweeps
from e2e.harness.fleet import wanted
from e2e.harness.scale import ScaleSpec, deployment_doc, parse_counter


def test_nodes_leave_room_for_every_pod_beside_the_two_default_ones() -> None:
    spec = ScaleSpec()
    added = spec.nodes() - 2
    assert added * spec.pods_per_node >= 1.25 * (spec.injected + spec.other_pods)
    assert spec.injected == 1000 and spec.profiles == 100 and len(spec.targets()) == 100


def test_sample_deployments_are_left_to_the_pod_runner() -> None:
    assert deployment_doc("a", 3, fleet=True)["spec"]["template"]["metadata"]["labels"][
        "perfpilot.io/host"] == "fleet"
    assert "perfpilot.io/host" not in deployment_doc("a", 3, fleet=False)["spec"]["template"][
        "metadata"]["labels"]


def test_parse_counter_sums_the_matching_series_only() -> None:
    text = "\n".join([
        '# TYPE apiserver_flowcontrol_dispatched_requests_total counter',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="perfpilot-operator",'
        'priority_level="workload-high"} 12',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",'
        'priority_level="exempt"} 900',
        'apiserver_flowcontrol_dispatched_requests_total{flow_schema="perfpilot-operator",'
        'priority_level="other"} 3.5',
    ])
    assert parse_counter(text, "apiserver_flowcontrol_dispatched_requests_total",
                         {"flow_schema": "perfpilot-operator"}) == 15.5


def _pod(**over: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"annotations": {"perfpilot.io/injected": "true"}},
        "spec": {"initContainers": [{"name": "perfpilot-agent"}], "containers": [{"name": "a"}]},
        "status": {"phase": "Running", "podIP": "127.41.3.4"}}
    for k, v in over.items():
        pod[k] = {**pod[k], **v}
    return pod


def test_the_fleet_hosts_injected_running_pods_with_an_ip_only() -> None:
    assert wanted(_pod())
    assert not wanted(_pod(status={"phase": "Pending"}))
    assert not wanted(_pod(status={"podIP": None}))
    assert not wanted(_pod(metadata={"annotations": {}, "deletionTimestamp": None}))
    assert not wanted(_pod(metadata={"annotations": {"perfpilot.io/injected": "true"},
                                     "deletionTimestamp": "2026-01-01T00:00:00Z"}))


def test_a_pass_lasts_until_every_sidecar_was_asked_after_the_tick() -> None:
    log = ("[2026-11-29 16:00:00,000] perfpilot_operator.r [INFO    ] resync pass over 0 "
           "profile(s) started\n"
           "[2026-11-29 16:00:10,500] perfpilot_operator.r [INFO    ] resync pass over 2 "
           "profile(s) started (1 still busy from the previous one)\n")
    ticks = resync_ticks(log)
    assert len(ticks) == 1                  # passes over no profile are not passes
    t = ticks[0]
    records = [(t - 1.0, "stats", "ns/a", 1), (t + 0.5, "stats", "ns/a", 1),
               (t + 2.0, "stats", "ns/b", 1), (t + 1.0, "configure", "ns/c", 2),
               (t + 3.0, "stats", "ns/a", 1)]
    assert sweeps(records, ticks, t - 5, t + 5, sidecars=2) == [2.0]
    # A sidecar never asked after the tick: no complete pass to report.
    assert sweeps(records[:2], ticks, t - 5, t + 5, sidecars=2) == []
    assert all(math.isfinite(x) for x in sweeps(records, ticks, t - 5, t + 5, 1))
