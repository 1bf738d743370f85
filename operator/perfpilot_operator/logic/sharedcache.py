"""The profile condition for the shared cache tier (spec.cache.shared), from what sidecars report.

Pure: takes each reachable sidecar's GetStats `shared_cache` (perfpilot.v1.SharedCacheStats) by pod
name and returns the condition, or None when no sidecar has the tier configured (the condition is
then left out). A sidecar whose tier is down still serves its app from its local caches, so this
is information, not Ready=False: `(type, status, reason, message)` as the other conditions.
monitoring.observe adds it to the pass's conditions (logic/status.compose_status sets them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONDITION = "SharedCacheAvailable"


def shared_cache_condition(stats: Mapping[str, Any]) -> tuple[str, bool, str, str] | None:
    """SharedCacheAvailable from {pod: SharedCacheStats}; None when no sidecar has cache.shared."""
    configured = {pod: s for pod, s in stats.items() if s.configured}
    if not configured:
        return None
    down = {pod: s for pod, s in configured.items() if not s.up}
    if not down:
        return (CONDITION, True, "Connected",
                f"{len(configured)}/{len(configured)} sidecars use the shared cache tier")
    detail = "; ".join(f"{pod}: {s.last_error or 'connecting'}"[:200] for pod, s in sorted(down.items())[:3])
    return (CONDITION, False, "Disconnected",
            f"{len(down)} of {len(configured)} sidecars cannot use the shared cache tier and serve from "
            f"their local caches (no errors to the app; values are not shared meanwhile): {detail}")
