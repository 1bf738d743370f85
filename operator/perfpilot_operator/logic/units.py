"""Go-style durations and Kubernetes quantities, parsed the way the API server does.

The CRD validates the syntax; these functions turn validated strings into numbers so the
rest of the operator never handles strings.
"""

from __future__ import annotations

import re
from decimal import Decimal

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "μs": Decimal("1e-6"),
    "ms": Decimal("1e-3"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600),
}

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([numkMGTPE])|[eE]([+-]?\d+))?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}


def parse_duration(text: str) -> float:
    """'1h30m' -> 5400.0 seconds. Raises ValueError naming the bad input (Go's time.ParseDuration)."""
    s = text.strip()
    if s in ("0", ""):
        if s == "0":
            return 0.0
        raise ValueError("empty duration")
    sign = Decimal(1)
    if s[0] in "+-":
        sign = Decimal(-1) if s[0] == "-" else Decimal(1)
        s = s[1:]
    pos, total = 0, Decimal(0)
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}: expected e.g. 300ms, 5s, 1m30s")
        total += Decimal(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return float(sign * total)


def parse_quantity(value: str | int | float) -> Decimal:
    """'500m' -> 0.5, '2Gi' -> 2147483648, 3 -> 3 (Kubernetes resource.Quantity syntax)."""
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    m = _QUANTITY.match(value.strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r}: expected e.g. 500m, 2, 512Mi, 1G")
    number, binary, decimal_suffix, exponent = m.groups()
    n = Decimal(number)
    if binary:
        return n * _BINARY[binary]
    if decimal_suffix:
        return n * _DECIMAL[decimal_suffix]
    if exponent:
        return n * Decimal(10) ** int(exponent)
    return n
