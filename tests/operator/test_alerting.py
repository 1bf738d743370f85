from perfpilot_operator.logic.alerting import AlertRule, AlertState, Phase, Transition, evaluate

RULE = AlertRule("HeartbeatSlow", "heartbeat_p99_seconds", ">", 0.1, for_seconds=30)


def run(rule: AlertRule, series: list[tuple[float, float | None]]) -> list[Transition]:
    state, out = AlertState(), []
    for now, value in series:
        state, t = evaluate(rule, state, value, now)
        out.append(t)
    return out


def test_pending_then_firing_after_for_then_resolved() -> None:
    assert run(RULE, [(0, 0.5), (10, 0.5), (30, 0.5), (40, 0.5), (50, 0.01)]) == [
        Transition.PENDING, Transition.NONE, Transition.FIRED, Transition.NONE, Transition.RESOLVED]


def test_a_blip_shorter_than_for_never_fires() -> None:
    assert run(RULE, [(0, 0.5), (20, 0.05), (25, 0.5)]) == [
        Transition.PENDING, Transition.CLEARED, Transition.PENDING]


def test_zero_for_fires_at_once() -> None:
    rule = AlertRule("Q", "queue_depth", ">=", 10)
    assert run(rule, [(0, 10), (1, 9)]) == [Transition.FIRED, Transition.RESOLVED]


def test_missing_value_keeps_state() -> None:
    state, _ = evaluate(RULE, AlertState(Phase.FIRING, 0, 1.0), None, 100)
    assert state.phase is Phase.FIRING


def test_operators() -> None:
    for op, value, holds in [(">", 1, False), (">=", 1, True), ("<", 0.5, True), ("<=", 2, False)]:
        assert AlertRule("A", "m", op, 1).holds(value) is holds
