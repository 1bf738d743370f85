"""Go-style durations and the one Duration sign rule (perfpilot_contract.durations)."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import given
from hypothesis import strategies as st

from perfpilot_contract.durations import (
    MAX_NS,
    DurationError,
    format_ns,
    from_proto,
    parse_ns,
    parse_seconds,
    to_proto,
)


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("0s", 0), ("-0", 0), ("5s", 5 * 10**9), ("200ms", 2 * 10**8), ("1m30s", 90 * 10**9),
    ("1h", 3600 * 10**9), ("1.5h", 5400 * 10**9), ("10us", 10_000), ("10µs", 10_000),
    ("10μs", 10_000), ("100ns", 100), ("2h45m30.5s", 9930 * 10**9 + 5 * 10**8), (".5s", 5 * 10**8),
    ("1.s", 10**9), ("-1.5s", -15 * 10**8), ("+2ms", 2 * 10**6), ("1m0.000000001s", 60 * 10**9 + 1),
])
def test_go_syntax(text: str, ns: int) -> None:
    assert parse_ns(text) == ns
    assert parse_seconds(text) == pytest.approx(ns / 1e9)


@pytest.mark.parametrize("text", ["", "5", "s", ".s", "5 s", "5sec", "1d", "-", "1m-30s", "--1s", "1h 2m",
                                  "m5", "5x", "3000000h"])
def test_bad_syntax_names_the_input(text: str) -> None:
    with pytest.raises(DurationError, match="duration"):
        parse_ns(text)


@given(st.integers(min_value=-MAX_NS, max_value=MAX_NS))
def test_format_parse_round_trip(ns: int) -> None:
    assert parse_ns(format_ns(ns)) == ns


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_proto_round_trip_is_well_formed(ns: int) -> None:
    d = to_proto(ns)
    assert not (d.seconds > 0 > d.nanos or d.seconds < 0 < d.nanos)
    assert from_proto("f", d) == ns == d.ToNanoseconds()


@pytest.mark.parametrize("seconds, nanos, why", [
    (1, -500_000_000, "opposite signs"), (-1, 500_000_000, "opposite signs"),
    (0, 1_000_000_000, "nanos must be within"), (0, -1_000_000_000, "nanos must be within"),
    (315_576_000_001, 0, "seconds must be within"),
])
def test_one_sign_rule_refuses_malformed_messages(seconds: int, nanos: int, why: str) -> None:
    with pytest.raises(DurationError, match=f"^cache.ttl.*{why}"):
        from_proto("cache.ttl", Duration(seconds=seconds, nanos=nanos))


def test_well_formed_negative_is_a_value_not_a_format_error() -> None:
    assert from_proto("x", Duration(seconds=-1, nanos=-5)) == -1_000_000_005
    assert from_proto("x", Duration(seconds=0, nanos=-5)) == -5
