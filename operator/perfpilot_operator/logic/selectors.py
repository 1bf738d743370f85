"""metav1.LabelSelector -> the `labelSelector` query string the API server filters by.

Why: the operator lists and watches only the pods that concern it (server-side filtering), so
the API server, not the operator, skips the cluster's other pods. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

from perfpilot_operator.logic.injection import OPT_IN_LABEL

# The operator's pod watch: opted-in pods (the webhook's objectSelector is the same label), which
# includes every injected pod. Selected pods without the label are found by the coverage audit.
WATCH_SELECTOR = f"{OPT_IN_LABEL}=true"


def to_query(selector: dict[str, Any]) -> str:
    """matchLabels AND matchExpressions as `k=v,k in (a,b),k notin (c),k,!k`. An empty selector
    raises ValueError: it would select every pod (the CRD refuses it, so this never happens)."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], sorted(e.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"selector.matchExpressions: unknown operator {op!r} "
                             f"(use In, NotIn, Exists or DoesNotExist)")
    if not parts:
        raise ValueError("an empty selector selects every pod; set selector.matchLabels")
    return ",".join(parts)


def audit_query(selector: dict[str, Any]) -> str:
    """The coverage audit's LIST: pods the profile selects that did NOT opt in (those that did
    are in the watch), so the answer is usually empty whatever the cluster's size."""
    return f"{to_query(selector)},{OPT_IN_LABEL}!=true"
