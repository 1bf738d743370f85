"""Profiles spread over the replicas (PERFPILOT_SHARDING=true): member Leases, polled.

Each replica holds a coordination.k8s.io/v1 Lease of its own, `<lease>-m-<hash of identity>`,
labelled `perfpilot.io/member-of=<lease>`, in the operator's namespace, and renews it every
retry period; in the same step it LISTs the group's Leases to learn who is alive
(logic/shards.py decides, by the reader's own clock). Two requests per replica per retry period,
whatever the number of profiles and pods. A replica that cannot renew for the renew deadline
stops acting on every profile before the others may take its share; a clean shutdown releases
its Lease (the others see it at their next poll). Member Leases unchanged for a long time (pods
replaced by a rollout) are deleted by whoever sees them.

`kubectl get lease -n <namespace> -l perfpilot.io/member-of` shows the members.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from perfpilot_operator import metrics as prom
from perfpilot_operator.leader import api_failure, lease_thread, watched
from perfpilot_operator.logic.lease import Action, LeaseTimings, Record, lease_spec, released_spec
from perfpilot_operator.logic.shards import Ownership, live_members

log = logging.getLogger("perfpilot_operator.shards")

MEMBER_LABEL = "perfpilot.io/member-of"
GC_AFTER = 6      # lease durations a member Lease stays unchanged before it is deleted


def member_lease_name(group: str, identity: str) -> str:
    """A DNS-1123 name per identity (pod names and host:port identities alike)."""
    return f"{group}-m-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


class MemberLeases:
    """Renews this replica's member Lease and reads the group's; updates `ownership`."""

    def __init__(self, api: client.ApiClient, ownership: Ownership, *, namespace: str,
                 group: str, timings: LeaseTimings) -> None:
        self.api = api
        self.coord = client.CoordinationV1Api(api)
        self.own = ownership
        self.namespace, self.group = namespace, group
        self.name = member_lease_name(group, ownership.me)
        self.timings = timings
        self._observed: dict[str, tuple[str, float]] = {}   # lease -> (resourceVersion, seen)
        self._renewed: float | None = None
        self._record: Record | None = None
        self._complained = False
        self._thread = lease_thread("perfpilot-members")
        self._timeout = timings.renew_deadline   # per request: a hung one ends in time

    def _body(self, spec: dict[str, Any], record: Record | None) -> client.V1Lease:
        meta: dict[str, Any] = {"name": self.name, "labels": {
            MEMBER_LABEL: self.group, "app.kubernetes.io/part-of": "perfpilot"}}
        if record is not None:
            meta["resourceVersion"] = record.resource_version
        lease = client.V1Lease.from_dict({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                          "metadata": meta, "spec": spec})
        assert lease is not None
        return lease

    def step(self) -> frozenset[str]:
        """One round: LIST the group, renew ours (create it the first time), collect the
        expired. Returns the live members, this replica included."""
        now = time.monotonic()
        out = self.coord.list_namespaced_lease(self.namespace,
                                               label_selector=f"{MEMBER_LABEL}={self.group}",
                                               _request_timeout=self._timeout)
        leases = [dict(self.api.sanitize_for_serialization(i)) for i in out.items]
        records = {le["metadata"]["name"]: Record.from_lease(le) for le in leases}
        for name, rec in records.items():
            seen = self._observed.get(name)
            if seen is None or seen[0] != rec.resource_version:
                self._observed[name] = (rec.resource_version, now)
        for name in set(self._observed) - set(records):
            del self._observed[name]
        mine = records.get(self.name)
        action = Action.RENEW if mine is not None and mine.holder == self.own.me else (
            Action.CREATE if mine is None else Action.ACQUIRE)
        spec = lease_spec(mine, self.own.me, action, self.timings, dt.datetime.now(dt.UTC))
        body = self._body(spec, mine)
        written = (self.coord.create_namespaced_lease(self.namespace, body,
                                                      _request_timeout=self._timeout)
                   if mine is None else
                   self.coord.replace_namespaced_lease(self.name, self.namespace, body,
                                                       _request_timeout=self._timeout))
        self._record = Record.from_lease(dict(self.api.sanitize_for_serialization(written)))
        self._renewed = time.monotonic()
        self._observed[self.name] = (self._record.resource_version, self._renewed)
        self._collect(now)
        holders = {name: rec.holder for name, rec in records.items()}
        holders[self.name] = self.own.me
        return live_members(self._observed, holders, self.timings.duration, now) | {self.own.me}

    def _collect(self, now: float) -> None:
        """Delete member Leases nobody renewed for GC_AFTER durations (replaced pods)."""
        for name, (_, seen) in list(self._observed.items()):
            if name != self.name and now - seen > GC_AFTER * self.timings.duration:
                try:
                    self.coord.delete_namespaced_lease(name, self.namespace,
                                                       _request_timeout=self._timeout)
                except ApiException as e:
                    if e.status not in (404, 409):
                        raise
                self._observed.pop(name, None)

    async def attempt(self) -> None:
        try:
            members = await watched(self._thread, self.step, self.timings.retry,
                                    self._check_deadline)
        except Exception as e:  # noqa: BLE001 - the API server may be away; try again
            status, what = api_failure(e)
            if status == 403:
                what += (" - the ServiceAccount needs list/create/update/delete on leases in its "
                         "own namespace (the chart's Role with sharding.enabled)")
            (log.error if not self._complained else log.debug)(
                f"sharding: cannot renew or list the member Leases in {self.namespace}: {what}")
            self._complained = True
        else:
            self._complained = False
            now = time.monotonic()
            self.own.set_healthy(True, now)
            before = self.own.members
            # Lost profiles stop at the resync's next beat (handlers/profiles._acts).
            lost = self.own.update(members, now)
            if members != before:
                log.info(f"profiles spread over {len(members)} replica(s): {sorted(members)}; "
                         f"{len(lost)} profile(s) go to others at once, those gained are "
                         f"reconciled here after {self.own.grace:g}s (handoff)")
            prom.SHARD_MEMBERS.labels(self.own.me).set(len(members))
        self._check_deadline()

    def _check_deadline(self) -> None:
        if self._renewed is None or \
                time.monotonic() - self._renewed > self.timings.renew_deadline:
            if self.own.healthy:
                log.warning(f"sharding: member Lease {self.namespace}/{self.name} not renewed "
                            f"for {self.timings.renew_deadline:g}s: this replica stops "
                            f"reconciling until it is")
            self.own.set_healthy(False, time.monotonic())

    async def run(self) -> None:
        while True:
            await self.attempt()
            await asyncio.sleep(self.timings.retry)

    async def release(self) -> None:
        """On a clean shutdown: no holder, so the others drop this replica at their next poll."""
        self.own.set_healthy(False, time.monotonic())
        if self._record is None:
            return
        try:
            body = self._body(released_spec(self._record), self._record)
            await asyncio.get_running_loop().run_in_executor(
                self._thread, functools.partial(self.coord.replace_namespaced_lease, self.name,
                                                self.namespace, body,
                                                _request_timeout=self._timeout))
        except Exception as e:  # noqa: BLE001 - it expires by itself anyway
            log.warning(f"could not release member Lease {self.namespace}/{self.name}: {e}")
