"""Which config each sidecar runs: read back from it every pass, never remembered.

A sidecar container restarted by the kubelet (same pod, same IP) is back at its admission-time
config; anything in the pod can push a generation over the Unix socket. So a pass trusts only
what the sidecars answered in this pass (GetStats' generation, then Configure's answer), and a
pod counts as configured only while its sidecar reports the profile's current generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

from perfpilot_operator.logic.conditions import PodView


def to_configure(pods: list[PodView], reported: Mapping[str, int], generation: int,
                 unreachable: Collection[str] = ()) -> list[PodView]:
    """The running injected pods whose sidecar did not report `generation` in this pass: behind
    (restarted), ahead (pushed from inside the pod) or not read yet. Sidecars that did not
    answer GetStats in this pass are left for the next one instead of waiting out retries."""
    return [p for p in pods if p.running and p.injected and p.ip and p.name not in unreachable
            and reported.get(p.name) != generation]


def with_reports(pods: list[PodView], reported: Mapping[str, int],
                 unhealthy: Collection[str]) -> list[PodView]:
    """The pods as their sidecars reported them in this pass (0: no answer, not configured)."""
    return [dataclasses.replace(p, configured_generation=reported.get(p.name, 0),
                                healthy=p.name not in unhealthy) for p in pods]
