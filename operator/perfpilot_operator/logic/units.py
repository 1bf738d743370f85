"""Go-style durations and Kubernetes quantities, parsed the way the API server does.

Durations are the contract's (perfpilot_contract.durations, shared with the sidecar); this
module adds Kubernetes quantities, which only the operator reads.

The CRD validates the syntax; these functions turn validated strings into numbers so the
rest of the operator never handles strings.
"""

from __future__ import annotations

import re
from decimal import Decimal

from perfpilot_contract.durations import parse_seconds as parse_duration

__all__ = ["parse_duration", "parse_quantity"]

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([numkMGTPE])|[eE]([+-]?\d+))?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}


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
