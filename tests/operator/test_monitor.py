import math

from perfpilot_operator.logic import monitor as mon
from perfpilot_operator.logic.alerting import AlertState, Phase, Transition
from perfpilot_operator.logic.histograms import Histogram
from perfpilot_operator.logic.stats import Snapshot, delta, first_sight, profile_metrics

SPEC = {
    "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent"},
    "resources": {"sidecar": {"limits": {"memory": "256Mi"}}},
    "alerts": [
        {"name": "Slow", "metric": "app_latency_p99_seconds", "op": ">", "threshold": 0.1,
         "for": "30s", "severity": "critical"},
        {"name": "Errors", "metric": "app_error_ratio", "op": ">=", "threshold": 0.05},
    ],
    "autoscaling": {"maxReplicas": 5, "metric": "queue_depth", "target": 50,
                    "scaleDown": {"stabilizationWindow": "1m"}},
}

BOUNDS = (0.01, 0.1, 1.0, math.inf)


def test_specs_parse_with_crd_defaults() -> None:
    slow, errors = mon.alert_rules(SPEC)
    assert (slow.for_seconds, slow.severity) == (30.0, "critical")
    assert (errors.for_seconds, errors.severity) == (0.0, "warning")
    auto = mon.autoscaling(SPEC)
    assert auto is not None and auto.interval == 15.0
    assert (auto.spec.min_replicas, auto.spec.max_replicas, auto.spec.tolerance) == (1, 5, 0.1)
    assert auto.spec.scale_down.stabilization_window == 60.0
    assert auto.spec.scale_down.max_step == 1 and auto.spec.scale_up.max_step == 4
    assert mon.sidecar_memory_limit(SPEC) == 256 * 2**20
    assert mon.autoscaling({k: v for k, v in SPEC.items() if k != "target"}) is None


def test_alert_goes_pending_then_firing_then_resolves() -> None:
    rules = mon.alert_rules(SPEC)
    states: dict[str, AlertState] = {}
    states, ch = mon.advance_alerts(rules, states, {"app_latency_p99_seconds": 0.5}, now=0)
    assert [(c.rule.name, c.transition) for c in ch] == [("Slow", Transition.PENDING)]
    states, ch = mon.advance_alerts(rules, states, {"app_latency_p99_seconds": 0.5}, now=29)
    assert ch == []
    states, ch = mon.advance_alerts(rules, states, {"app_latency_p99_seconds": 0.4}, now=30)
    assert [c.transition for c in ch] == [Transition.FIRED]
    active = mon.active_alerts(rules, states, lambda t: f"t={t:g}")
    assert active == [{"name": "Slow", "state": "firing", "severity": "critical",
                       "since": "t=0", "value": 0.4,
                       "message": "app_latency_p99_seconds = 0.4 > 0.1"}]
    # No data keeps it firing (like a Prometheus series that is not yet stale).
    states, ch = mon.advance_alerts(rules, states, {}, now=31)
    assert ch == [] and states["Slow"].phase is Phase.FIRING
    states, ch = mon.advance_alerts(rules, states, {"app_latency_p99_seconds": 0.05}, now=32)
    assert [c.transition for c in ch] == [Transition.RESOLVED]
    assert mon.active_alerts(rules, states, str) == []


def test_removed_rule_drops_its_state() -> None:
    rules = mon.alert_rules(SPEC)
    states, _ = mon.advance_alerts(rules, {}, {"app_error_ratio": 0.5}, now=0)
    assert states["Errors"].phase is Phase.FIRING
    states, _ = mon.advance_alerts(rules[:1], states, {"app_error_ratio": 0.5}, now=1)
    assert "Errors" not in states


def _snap(uptime: float, counts: tuple[int, ...], errors: int = 0, queue: float = 0) -> Snapshot:
    return Snapshot(uptime=uptime, app=Histogram(BOUNDS, counts, 0.0), app_errors=errors,
                    queue_depth=queue, workers=2, busy_workers=1)


def test_deltas_merge_across_pods_and_restarts_start_from_zero() -> None:
    a0, a1 = _snap(10, (10, 0, 0, 0)), _snap(20, (10, 0, 90, 0), errors=9, queue=4)
    b1 = _snap(5, (0, 10, 0, 0), errors=1, queue=6)      # b restarted: its counts are all new
    da, db = delta(a0, a1), delta(_snap(100, (500, 0, 0, 0)), b1)
    assert da.app is not None and da.app.counts == (0, 0, 90, 0)
    assert db.app is not None and db.app.counts == (0, 10, 0, 0)
    m = profile_metrics([da, db], memory_limit_bytes=None)
    assert m["app_error_ratio"] == 10 / 100
    assert m["queue_depth"] == 5.0
    assert m["pool_utilization"] == 0.5
    assert 0.1 < m["app_latency_p99_seconds"] <= 1.0
    assert math.isnan(m["memory_utilization"]) and math.isnan(m["cache_hit_ratio"])


def test_first_sight_is_a_baseline_not_new_traffic() -> None:
    """After an operator start every sidecar is seen for the first time: its cumulative history
    was already acted on (issue 11: each restart added a scale-up step with no traffic)."""
    old = _snap(3600, (0, 0, 9000, 0), errors=900, queue=3)
    d = first_sight(old, since_last_look=None)
    assert d.app is not None and d.app.count == 0 and d.app_errors == 0
    assert d.queue_depth == 3      # gauges are now, not history
    m = profile_metrics([d], memory_limit_bytes=None)
    assert math.isnan(m["app_latency_p99_seconds"]) and math.isnan(m["app_error_ratio"])
    assert m["queue_depth"] == 3
    # Later passes: the second snapshot diffs against the baseline (no traffic: nothing new).
    later = delta(old, _snap(3615, (0, 0, 9000, 0), errors=900))
    assert later.app is not None and later.app.count == 0
    # Seen after a previous look, a long-running sidecar is still history...
    assert first_sight(old, since_last_look=15).app_errors == 0
    # ... but one that started since that look has only new traffic.
    young = _snap(10, (0, 5, 0, 0), errors=1)
    assert first_sight(young, since_last_look=15) == young


def test_l1_hit_ratio_is_its_own_figure_and_cache_hit_ratio_keeps_its_meaning() -> None:
    """L1 hits never reach the sidecar: cache_hit_ratio is over the reads that did (L1 misses);
    cache_l1_hit_ratio is the clients' own, diffed and merged like every counter."""
    from dataclasses import replace

    a0 = replace(_snap(10, (0, 0, 0, 0)), l1_hits=100, l1_misses=100, cache_hits=50, cache_misses=50)
    a1 = replace(_snap(20, (0, 0, 0, 0)), l1_hits=190, l1_misses=110, cache_hits=58, cache_misses=52)
    b = replace(_snap(5, (0, 0, 0, 0)), l1_hits=0, l1_misses=0, cache_hits=0, cache_misses=0)
    m = profile_metrics([delta(a0, a1), delta(_snap(100, (0, 0, 0, 0)), b)], memory_limit_bytes=None)
    assert m["cache_l1_hit_ratio"] == 90 / 100 and m["cache_hit_ratio"] == 8 / 10
    assert first_sight(a1, since_last_look=None).l1_hits == 0
    assert math.isnan(profile_metrics([delta(a1, a1)], memory_limit_bytes=None)["cache_l1_hit_ratio"])
