"""Running pods whose requests/limits differ from spec.resources, and the in-place resize patch
(the pods/resize subresource) that brings them in line without a restart.

Pure: the operator sends the patch where the API server offers pods/resize (1.33+), and counts
the pods it could not resize as stale.
"""

from __future__ import annotations

from typing import Any

from perfpilot_operator.logic.injection import SIDECAR_NAME
from perfpilot_operator.logic.units import parse_quantity

RESIZE_MIN_MINOR = 33     # pods/resize subresource (in-place resize, sidecars included)


def app_container_name(pod_spec: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """The container the profile's app resources apply to: the named one, else the first
    (the same rule as injection)."""
    containers = [c.get("name") for c in pod_spec.get("containers", [])
                  if c.get("name") != SIDECAR_NAME]
    wanted = ((spec.get("resources") or {}).get("app") or {}).get("container")
    if wanted in containers:
        return wanted
    return containers[0] if containers else None


def _desired(block: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    block = block or {}
    return {k: dict(block[k]) for k in ("requests", "limits") if block.get(k)}


def _differs(current: dict[str, Any], desired: dict[str, dict[str, str]]) -> bool:
    """True when a quantity the profile sets is missing or different (1000m == 1)."""
    for kind, values in desired.items():
        have = (current or {}).get(kind) or {}
        for resource, quantity in values.items():
            if resource not in have or parse_quantity(have[resource]) != parse_quantity(quantity):
                return True
    return False


def resize_patch(pod: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any] | None:
    """The strategic-merge patch for pods/resize, or None when the pod already matches."""
    pod_spec = pod.get("spec", {})
    res = spec.get("resources") or {}
    patch: dict[str, list[dict[str, Any]]] = {}
    app = app_container_name(pod_spec, spec)
    want_app = _desired(res.get("app"))
    if app and want_app:
        current = next(c for c in pod_spec.get("containers", []) if c.get("name") == app)
        if _differs(current.get("resources", {}), want_app):
            patch["containers"] = [{"name": app, "resources": want_app}]
    want_sidecar = _desired(res.get("sidecar"))
    if want_sidecar:
        for section in ("initContainers", "containers"):
            sidecar = next((c for c in pod_spec.get(section, [])
                            if c.get("name") == SIDECAR_NAME), None)
            if sidecar is not None:
                if _differs(sidecar.get("resources", {}), want_sidecar):
                    patch.setdefault(section, []).append(
                        {"name": SIDECAR_NAME, "resources": want_sidecar})
                break
    return {"spec": patch} if patch else None
