"""The HPA algorithm as perfpilot runs it: tolerance, windows, steps, limits, missing metrics."""

from hypothesis import given, strategies as st

from perfpilot_operator.logic.scaling import (
    AutoscalingSpec, Policy, ScalerState, decide, parse_time, raw_recommendation,
)

SPEC = AutoscalingSpec(min_replicas=1, max_replicas=10, target=50, tolerance=0.1,
                       scale_up=Policy(0, 4), scale_down=Policy(300, 1))


def test_formula_matches_hpa() -> None:
    assert raw_recommendation(2, 150, 50, 0.1) == 6      # ceil(2 × 3)
    assert raw_recommendation(4, 20, 50, 0.1) == 2       # ceil(4 × 0.4) = ceil(1.6)
    assert raw_recommendation(3, 54, 50, 0.1) == 3       # within tolerance
    assert raw_recommendation(3, 56, 50, 0.1) == 4       # ratio 1.12 > 1.1


def test_scale_up_is_step_limited_and_immediate() -> None:
    d = decide(ScalerState(), now=0, current=1, metric=500, spec=SPEC)
    assert (d.replicas, d.reason) == (5, "ScaledUp")     # wants 10, +4 max per decision


def test_scale_down_waits_for_the_window_then_steps_by_one() -> None:
    state = ScalerState()
    state = ScalerState()
    decide(state, now=0, current=6, metric=50, spec=SPEC)             # recommends 6
    d = decide(state, now=100, current=6, metric=10, spec=SPEC)       # recommends 2
    assert (d.replicas, d.reason) == (6, "StabilizingDown")
    d = decide(state, now=301, current=6, metric=10, spec=SPEC)       # window passed
    assert (d.replicas, d.reason) == (5, "ScaledDown")                # one step at a time


def test_missing_metric_holds() -> None:
    d = decide(ScalerState(), now=0, current=3, metric=None, spec=SPEC)
    assert (d.replicas, d.reason, d.scaling_active) == (3, "MissingMetrics", False)


def test_missing_metric_still_enforces_limits() -> None:
    d = decide(ScalerState(), now=0, current=12, metric=None, spec=SPEC)
    assert d.replicas == 10 and d.reason == "OutOfRange"


def test_at_max_reports_limit() -> None:
    d = decide(ScalerState(), now=0, current=10, metric=1000, spec=SPEC)
    assert (d.replicas, d.reason) == (10, "AtLimit")


@given(current=st.integers(1, 10), metric=st.floats(0, 10_000, allow_nan=False),
       steps=st.lists(st.tuples(st.floats(0, 400), st.floats(0, 10_000)), max_size=8))
def test_decisions_stay_within_bounds_and_steps(current: int, metric: float,
                                                steps: list[tuple[float, float]]) -> None:
    state, now = ScalerState(), 0.0
    for dt, m in [(0.0, metric), *steps]:
        now += dt
        d = decide(state, now=now, current=current, metric=m, spec=SPEC)
        assert SPEC.min_replicas <= d.replicas <= SPEC.max_replicas
        assert -SPEC.scale_down.max_step <= d.replicas - current <= SPEC.scale_up.max_step
        # Never moves against the metric: above target never scales down, below never up.
        if m > SPEC.target * (1 + SPEC.tolerance):
            assert d.replicas >= current
        if m < SPEC.target * (1 - SPEC.tolerance):
            assert d.replicas <= current
        current = d.replicas


def test_a_new_scaler_does_not_scale_down_before_one_down_window() -> None:
    """An operator restart must not shrink workloads: no history is not 'all low'."""
    state = ScalerState()
    d = decide(state, now=1000, current=6, metric=0, spec=SPEC)
    assert (d.replicas, d.reason) == (6, "StabilizingDown")
    d = decide(state, now=1299, current=6, metric=0, spec=SPEC)
    assert d.replicas == 6
    d = decide(state, now=1301, current=6, metric=0, spec=SPEC)
    assert (d.replicas, d.reason) == (5, "ScaledDown")
    # Scale-up is never held back by this.
    d = decide(ScalerState(), now=0, current=2, metric=100, spec=SPEC)
    assert (d.replicas, d.reason) == (4, "ScaledUp")


def test_missing_metrics_policies() -> None:
    for policy, expected in (("hold", 3), ("scaleToMin", 1), ("scaleToMax", 10)):
        spec = AutoscalingSpec(min_replicas=1, max_replicas=10, target=50,
                               on_missing_metrics=policy)
        d = decide(ScalerState(), now=0, current=3, metric=float("nan"), spec=spec)
        assert (d.replicas, d.reason, d.scaling_active) == (expected, "MissingMetrics", False)


def test_a_resumed_scaler_waits_a_whole_up_window_too() -> None:
    """Recovered from status after a restart, the up-window's history is unknown: no scale-up
    before one whole up-window of fresh recommendations (never a shorter window)."""
    spec = AutoscalingSpec(min_replicas=1, max_replicas=10, target=50,
                           scale_up=Policy(60, 4), scale_down=Policy(300, 1))
    state = ScalerState(resumed=True)
    d = decide(state, now=1000, current=5, metric=100, spec=spec)
    assert (d.replicas, d.reason) == (5, "StabilizingUp")
    assert decide(state, now=1059, current=5, metric=100, spec=spec).replicas == 5
    d = decide(state, now=1061, current=5, metric=100, spec=spec)
    assert (d.replicas, d.reason) == (9, "ScaledUp")
    # A scaler that never ran before (a new profile) scales up at once, as HPA does.
    assert decide(ScalerState(), now=1000, current=5, metric=100, spec=spec).replicas == 9


def test_status_times_parse() -> None:
    assert parse_time("1970-01-01T00:01:40Z") == 100.0
    assert parse_time(None) is None and parse_time("yesterday") is None
