"""Go-style durations ("250ms", "1h30m") and protobuf Durations, as integer nanoseconds.

One sign rule for every RPC and for --config: a protobuf Duration is well-formed when
|nanos| <= 999,999,999, seconds and nanos do not have opposite signs and |seconds| <= 10,000
years (the protobuf spec, as Go's durationpb.CheckValid reads it). A malformed message is refused,
never normalised (1s + -0.5s is not silently 0.5s). A well-formed negative value is then simply
out of range: every perfpilot duration has a minimum of 0s or more, and the message names it.
"""

from __future__ import annotations

import re

from google.protobuf.duration_pb2 import Duration

NS_PER_SECOND = 1_000_000_000
MAX_NS = 2**63 - 1
"""Largest magnitude Go's time.Duration holds (~292 years)."""
MAX_PROTO_SECONDS = 315_576_000_000
"""Largest |seconds| of a well-formed protobuf Duration (10,000 years)."""

_UNIT_NS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
    "s": NS_PER_SECOND, "m": 60 * NS_PER_SECOND, "h": 3600 * NS_PER_SECOND,
}
_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    """A duration string or message that is malformed (not merely out of range)."""


def parse_ns(text: str) -> int:
    """Go's time.ParseDuration: "1h30m" -> 5_400_000_000_000 ns; "0" alone needs no unit."""
    s = text.strip()
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f"invalid duration {text!r}: expected e.g. 300ms, 5s, 1m30s")
    pos, total = 0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or (not m.group(1) and not m.group(2)):
            raise DurationError(f"invalid duration {text!r}: expected e.g. 300ms, 5s, 1m30s")
        unit = _UNIT_NS[m.group(3)]
        whole, frac = m.group(1) or "0", m.group(2) or ""
        total += int(whole) * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
        pos = m.end()
    if total > MAX_NS:
        raise DurationError(f"invalid duration {text!r}: longer than about 292 years")
    return sign * total


def parse_seconds(text: str) -> float:
    """Go duration string -> seconds (float), for code that works in seconds."""
    return parse_ns(text) / NS_PER_SECOND


def _fraction(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def format_ns(ns: int) -> str:
    """Compact Go syntax: 0s, 250ms, 1.5s, 5m, 1h30m, 1m0.5s (parse_ns reads it back exactly)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < NS_PER_SECOND:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * NS_PER_SECOND)
    minutes, rest = divmod(rest, 60 * NS_PER_SECOND)
    out = sign + (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{_fraction(rest, NS_PER_SECOND)}s" if rest else "")


def from_proto(field: str, d: Duration) -> int:
    """Nanoseconds of a Duration message; DurationError naming `field` when it is malformed."""
    if not -999_999_999 <= d.nanos <= 999_999_999:
        raise DurationError(f"{field}.nanos must be within [-999999999, 999999999], got {d.nanos}")
    if (d.seconds > 0 and d.nanos < 0) or (d.seconds < 0 and d.nanos > 0):
        raise DurationError(
            f"{field} has seconds and nanos of opposite signs ({d.seconds}s, {d.nanos}ns); "
            "a Duration's parts share one sign")
    if abs(d.seconds) > MAX_PROTO_SECONDS:
        raise DurationError(f"{field}.seconds must be within ±{MAX_PROTO_SECONDS}, got {d.seconds}")
    return d.seconds * NS_PER_SECOND + d.nanos


def to_proto(ns: int) -> Duration:
    """A well-formed Duration message for `ns` nanoseconds (parts share the sign)."""
    seconds, nanos = divmod(abs(ns), NS_PER_SECOND)
    sign = -1 if ns < 0 else 1
    return Duration(seconds=sign * seconds, nanos=sign * nanos)


def seconds_to_ns(seconds: float) -> int:
    """Seconds (float) -> nanoseconds, rounded to the nearest nanosecond."""
    return round(seconds * NS_PER_SECOND)
