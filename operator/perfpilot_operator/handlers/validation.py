"""The PerfProfile webhook: refuse profiles that conflict with other objects."""

from __future__ import annotations

from typing import Any

import kopf

from perfpilot_operator.logic.validation import cross_object_problems
from perfpilot_operator.logic.webhooks import PROFILE_HANDLER_ID


@kopf.on.validate("perfpilot.io", "v1alpha1", "perfprofiles", id=PROFILE_HANDLER_ID,  # type: ignore[arg-type]  # kopf-kwargs
                  operations=["CREATE", "UPDATE"], persistent=True)
def validate_profile(body: kopf.Body, old: kopf.Body | None, operation: str,
                     profiles_by_namespace: kopf.Index[str, dict[str, Any]],
                     hpas_by_namespace: kopf.Index[str, dict[str, Any]], **_: Any) -> None:
    if operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"):
        return   # metadata/status-only updates (kopf's own bookkeeping) are never refused
    namespace = body.get("metadata", {}).get("namespace", "")
    name = body.get("metadata", {}).get("name", "")
    others = [p for p in profiles_by_namespace.get(namespace, [])
              if p["metadata"]["name"] != name]
    problems = cross_object_problems(dict(body), others, list(hpas_by_namespace.get(namespace, [])))
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=409)
