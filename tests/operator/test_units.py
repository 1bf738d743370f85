from decimal import Decimal

import pytest

from perfpilot_operator.logic.units import parse_duration, parse_quantity


@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0), ("0s", 0.0), ("5s", 5.0), ("200ms", 0.2), ("1m30s", 90.0), ("1h", 3600.0),
    ("1.5h", 5400.0), ("10us", 1e-5), ("10µs", 1e-5), ("100ns", 1e-7), ("2h45m30.5s", 9930.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "5sec", "1d", "-", "1m-30s"])
def test_bad_durations_name_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value, expected", [
    ("500m", Decimal("0.5")), ("2", Decimal(2)), (2, Decimal(2)), ("512Mi", Decimal(512 * 2**20)),
    ("2Gi", Decimal(2 * 2**30)), ("1G", Decimal(10**9)), ("1e3", Decimal(1000)),
    ("100k", Decimal(100_000)), (".5", Decimal("0.5")),
])
def test_quantities(value: str | int, expected: Decimal) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("text", ["", "abc", "1Gb", "1.2.3", "--1", "5 Mi"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_rpc_result_labels_are_status_code_names() -> None:
    import grpc

    from perfpilot_operator import metrics as prom

    err = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="connection refused")
    assert prom.rpc_result(object()) == "OK"
    assert prom.rpc_result(err) == "UNAVAILABLE"
    assert prom.rpc_result(TimeoutError()) == "TimeoutError"


def test_forget_profile_drops_its_counters_too() -> None:
    from perfpilot_operator import metrics as prom

    prom.CONFIGURE_CALLS.labels("ns-forget", "p", "OK").inc()
    prom.GETSTATS_CALLS.labels("ns-forget", "p", "UNAVAILABLE").inc()
    prom.GETSTATS_CALLS.labels("ns-keep", "p", "OK").inc()
    prom.forget_profile("ns-forget", "p")
    series = {s.labels.get("namespace") for m in prom.REGISTRY.collect()
              if m.name in ("perfpilot_operator_configure_calls", "perfpilot_operator_getstats_calls")
              for s in m.samples}
    assert "ns-forget" not in series and "ns-keep" in series


@pytest.mark.parametrize(("argv", "env", "root", "kopf_level"), [
    ([], None, "INFO", "INFO"),
    (["--log-level", "warning"], None, "WARNING", "WARNING"),
    (["--log-level=error"], None, "ERROR", "WARNING"),
    (["--verbose"], None, "DEBUG", "DEBUG"),
    ([], "Debug", "DEBUG", "DEBUG"),
])
def test_operator_log_level_flag_and_env(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: str | None,
                                         root: str, kopf_level: str) -> None:
    """--log-level / PERFPILOT_LOG_LEVEL reach the root logger (kopf.configure only knows debug,
    info and warning); kopf.operator is replaced so nothing connects to a cluster."""
    import logging

    import kopf

    from perfpilot_operator import __main__ as cli

    seen: dict[str, str] = {}

    def fake_configure(**kw: object) -> None:
        seen["kopf"] = "DEBUG" if kw.get("verbose") else "WARNING" if kw.get("quiet") else "INFO"

    async def fake_operator(**kw: object) -> None:
        seen["root"] = logging.getLevelName(logging.getLogger().level)

    if env is None:
        monkeypatch.delenv("PERFPILOT_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("PERFPILOT_LOG_LEVEL", env)
    monkeypatch.setattr(kopf, "configure", fake_configure)
    monkeypatch.setattr(kopf, "operator", fake_operator)
    old = logging.getLogger().level
    try:
        assert cli.main(argv) == 0
    finally:
        logging.getLogger().setLevel(old)
    assert seen == {"kopf": kopf_level, "root": root}


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("True", True), (" 1 ", True),
                                               ("yes", True), ("FALSE", False), ("off", False),
                                               ("", False)])
def test_operator_switches_read_any_spelling_of_a_boolean(monkeypatch: pytest.MonkeyPatch,
                                                          raw: str, expected: bool) -> None:
    from perfpilot_operator.settings import Settings

    monkeypatch.setenv("PERFPILOT_SHARDING", raw)
    monkeypatch.setenv("PERFPILOT_REGISTER_WEBHOOKS", raw)
    s = Settings.from_env()
    assert s.sharding is expected
    # empty: the default (true for webhook registration), never a silent false
    assert s.register_webhooks is (expected if raw else True)


@pytest.mark.parametrize(("env", "value", "message"), [
    ("PERFPILOT_LOG_LEVEL", "loud", "PERFPILOT_LOG_LEVEL='loud'"),
    ("PERFPILOT_LEADER_ELECTION", "ture",
     "PERFPILOT_LEADER_ELECTION: 'ture' is not a boolean; use true or false"),
])
def test_operator_refuses_a_bad_setting_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str, value: str,
        message: str) -> None:
    from perfpilot_operator import __main__ as cli

    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
