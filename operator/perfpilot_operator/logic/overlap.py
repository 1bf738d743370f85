"""Whether two label selectors can select the same pod — the rule the schema cannot state.

Exact for matchLabels and In/NotIn/Exists/DoesNotExist: the selectors overlap unless some key
is constrained incompatibly by the two. (A pod with any other labels can always be made.)
"""

from __future__ import annotations

from typing import Any

Constraint = tuple[str, frozenset[str] | None]   # ("in", values) | ("notin", values) | ("exists", None) | ("absent", None)


def _constraints(selector: dict[str, Any]) -> dict[str, list[Constraint]]:
    out: dict[str, list[Constraint]] = {}
    for k, v in (selector.get("matchLabels") or {}).items():
        out.setdefault(k, []).append(("in", frozenset([v])))
    for e in selector.get("matchExpressions") or []:
        op = e["operator"]
        vals = frozenset(e.get("values") or [])
        kind = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "absent"}[op]
        out.setdefault(e["key"], []).append((kind, vals if kind in ("in", "notin") else None))
    return out


def _satisfiable(cs: list[Constraint]) -> bool:
    allowed: frozenset[str] | None = None   # None = any value
    banned: set[str] = set()
    must_exist = must_be_absent = False
    for kind, vals in cs:
        if kind == "in":
            assert vals is not None
            allowed = vals if allowed is None else allowed & vals
            must_exist = True
        elif kind == "notin":
            assert vals is not None
            banned |= vals
        elif kind == "exists":
            must_exist = True
        else:
            must_be_absent = True
    if must_be_absent:
        return not must_exist
    if allowed is not None:
        return bool(allowed - banned)
    return True   # some value outside `banned` always exists


def selectors_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ca, cb = _constraints(a), _constraints(b)
    for key in set(ca) | set(cb):
        if not _satisfiable(ca.get(key, []) + cb.get(key, [])):
            return False
    return True
