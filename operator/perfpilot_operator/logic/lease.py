"""Leader election over a coordination.k8s.io/v1 Lease: the decision, without I/O.

The rules are client-go's (and controller-runtime's): a candidate never compares the holder's
renewTime with its own clock (clocks differ); it remembers when *it* last saw the record change
and treats the lease as expired once the record has stayed unchanged for leaseDurationSeconds
by its own monotonic clock. The holder renews every retry period and gives leadership up when it
has not renewed for `renew_deadline` (< the duration), so it stops acting before anyone else
may start. An empty holderIdentity is a released lease: free at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class LeaseTimings:
    duration: float = 10.0
    """leaseDurationSeconds: how long a silent holder keeps the lease (takeover <= this + retry)."""
    renew_deadline: float = 7.0
    """The holder steps down when it has not renewed for this long (< duration)."""
    retry: float = 2.0
    """Seconds between attempts (renewals of the holder, polls of the others)."""

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(f"leader election timings need 0 < retry ({self.retry:g}s) < "
                             f"renew deadline ({self.renew_deadline:g}s) < lease duration "
                             f"({self.duration:g}s)")


@dataclass(frozen=True)
class Record:
    """What a Lease's spec says, plus its resourceVersion (the optimistic-concurrency token)."""
    holder: str
    duration: float
    transitions: int
    resource_version: str

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   duration=float(spec.get("leaseDurationSeconds") or 0),
                   transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=str((lease.get("metadata") or {}).get("resourceVersion", "")))


class Action(Enum):
    CREATE = "create"      # no Lease yet: create it holding it
    RENEW = "renew"        # ours: write a fresh renewTime
    ACQUIRE = "acquire"    # expired or released: take it (transitions + 1)
    WAIT = "wait"          # another holder is alive


def decide(record: Record | None, me: str, observed_at: float, now: float) -> Action:
    """What the candidate `me` does with the record it just read; `observed_at` is the monotonic
    time it first saw this exact record (same resourceVersion)."""
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if not record.holder or now - observed_at >= record.duration:
        return Action.ACQUIRE
    return Action.WAIT


def lease_spec(record: Record | None, me: str, action: Action, timings: LeaseTimings,
               wall: dt.datetime) -> dict[str, Any]:
    """The spec written for CREATE/RENEW/ACQUIRE (MicroTime strings, as client-go writes)."""
    stamp = wall.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    spec: dict[str, Any] = {"holderIdentity": me, "leaseDurationSeconds": int(timings.duration),
                            "renewTime": stamp}
    if action is Action.RENEW and record is not None:
        spec["leaseTransitions"] = record.transitions
    else:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = 0 if record is None else record.transitions + 1
    return spec


def released_spec(record: Record) -> dict[str, Any]:
    """What a holder writes on a clean shutdown: no holder, so the next candidate takes over at
    its next poll instead of waiting out the duration."""
    return {"holderIdentity": None, "leaseDurationSeconds": 1,
            "leaseTransitions": record.transitions}
