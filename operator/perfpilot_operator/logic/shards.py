"""Which replica reconciles which profile when profiles are sharded (PERFPILOT_SHARDING): the
decision, without I/O.

Each replica holds a member Lease (shards.py); the live members are those whose Lease record
changed within its duration by the reader's own clock (logic/lease.py's rule: no clock
comparison between machines). A profile belongs to the member with the highest rendezvous hash
of (member, profile): every replica computes the same owner from the same member set, and a
member joining or leaving moves only the profiles it gains or loses (~1/n of them).

Handoff without two owners: a replica acts on a profile it gained through a change of the member
set only once that set has been stable for `grace` (> the others' poll + renew deadline): by
then every live replica has seen the same set, and one that could not see it has stopped acting
(its own member Lease was not renewed for the renew deadline). Profiles it owned before and
still owns continue without a pause; a new profile under a stable set is acted on at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

Key = tuple[str, str]     # (namespace, profile name)


def score(member: str, key: Key) -> int:
    """The rendezvous weight of `member` for `key` (stable across processes and versions)."""
    h = hashlib.blake2b(f"{member}\0{key[0]}/{key[1]}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def owner(key: Key, members: Iterable[str]) -> str | None:
    """The member that owns `key` (None without members); ties broken by the name."""
    best = max(((score(m, key), m) for m in members), default=None)
    return best[1] if best is not None else None


def live_members(observed: dict[str, tuple[str, float]], holders: dict[str, str],
                 duration: float, now: float) -> frozenset[str]:
    """Members whose Lease record (resourceVersion, first seen at) changed within `duration` by
    our clock and that hold it (an empty holder is a member that left cleanly)."""
    return frozenset(holders[name] for name, (_, seen) in observed.items()
                     if holders.get(name) and now - seen < duration)


@dataclass
class Ownership:
    """This replica's view: the member set, since when it has been stable, and from when each
    owned profile may be acted on."""

    me: str
    grace: float
    members: frozenset[str] = frozenset()
    since: float = 0.0                     # monotonic time the current member set was first seen
    healthy: bool = False                  # our own member Lease renewed within the deadline
    acting_from: dict[Key, float] = field(default_factory=dict)

    def update(self, members: frozenset[str], now: float) -> set[Key]:
        """A new view of the live members (always including `me` while healthy). Returns the
        profiles this replica stops owning (their passes stop and their memory goes)."""
        if members == self.members:
            return set()
        self.members, self.since = members, now
        lost = {k for k in self.acting_from if owner(k, members) != self.me}
        for k in lost:
            del self.acting_from[k]
        return lost

    def set_healthy(self, healthy: bool, now: float) -> None:
        """Our member Lease renewed (True) or not within the renew deadline (False). Back from
        unhealthy counts as a new view: others may have taken our profiles meanwhile."""
        if healthy and not self.healthy:
            self.since = now
        if not healthy:
            self.acting_from.clear()
        self.healthy = healthy

    def acts(self, key: Key, now: float) -> bool:
        """Whether this replica reconciles `key` now."""
        if not self.healthy or owner(key, self.members) != self.me:
            self.acting_from.pop(key, None)
            return False
        start = self.acting_from.setdefault(key, self.since + self.grace)
        return now >= start

    def owned(self, keys: Iterable[Key]) -> int:
        """How many of `keys` this replica owns in its current view (acting or in handoff)."""
        return sum(1 for k in keys if owner(k, self.members) == self.me) if self.healthy else 0
