"""Leader election: every replica serves the webhooks, exactly one (the Lease holder) acts.

A coordination.k8s.io/v1 Lease in the operator's namespace, managed as client-go's
leaderelection does (logic/lease.py holds the rules). Not kopf's peering: peers of the same
priority both keep running (kopf only warns), and a paused kopf operator pauses every watch
stream, its indexes included, which the webhooks of every replica read.

`kubectl get lease -n <namespace>` shows the holder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from perfpilot_operator import metrics as prom
from perfpilot_operator.logic.lease import (
    Action, LeaseTimings, Record, decide, lease_spec, released_spec,
)

log = logging.getLogger("perfpilot_operator.leader")
R = TypeVar("R")


def lease_thread(name: str) -> ThreadPoolExecutor:
    """A thread of its own for a Lease loop. On the default executor (6 threads on 2 cores) a
    renewal queued behind the passes' status patches: on a slow API server it missed the renew
    deadline, and the replica stopped acting (and, sharded, waited out a new handoff)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)


async def watched(executor: ThreadPoolExecutor, step: Callable[[], R], every: float,
                  on_late: Callable[[], None]) -> R:
    """`step()` on `executor`; while it is not back (a request the API server never answers),
    `on_late()` every `every` seconds, so a replica steps down on time even then."""
    fut = asyncio.get_running_loop().run_in_executor(executor, step)
    while not (await asyncio.wait({fut}, timeout=every))[0]:
        on_late()
    return fut.result()


@dataclass
class Leadership:
    """Who leads, as this replica last saw it. `elected` is set while this replica leads;
    `changed` is set on every change (whoever waits on it clears it)."""
    identity: str
    namespace: str = ""
    lease: str = ""
    is_leader: bool = False
    holder: str = ""
    elected: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self, leader: bool, holder: str) -> None:
        if leader == self.is_leader and holder == self.holder:
            return
        was = self.is_leader
        self.is_leader, self.holder = leader, holder
        prom.LEADER.labels(self.identity).set(1 if leader else 0)
        where = f"lease {self.namespace}/{self.lease}"
        if leader and not was:
            log.info(f"{self.identity} is now the leader ({where}): it runs rollout, stats, "
                     f"alerts, autoscaling, the audit and the webhook configurations")
            self.elected.set()
        elif was and not leader:
            log.warning(f"{self.identity} is no longer the leader ({where}, holder now "
                        f"{holder or 'nobody'}): its control loops stop; webhooks keep serving")
            self.elected.clear()
        elif holder:
            log.info(f"the leader is {holder} ({where}); {self.identity} serves webhooks only")
        self.changed.set()


def always_leader(identity: str) -> Leadership:
    """Leader election off (PERFPILOT_LEADER_ELECTION=false): one replica that always acts."""
    ld = Leadership(identity=identity)
    ld.set(True, identity)
    return ld


class LeaseElector:
    """Reads and writes the Lease every retry period (the official client, in a thread)."""

    def __init__(self, api: client.ApiClient, leadership: Leadership,
                 timings: LeaseTimings) -> None:
        self.api = api
        self.coord = client.CoordinationV1Api(api)
        self.ld = leadership
        self.timings = timings
        self._observed: tuple[str, float] | None = None    # (resourceVersion, first seen)
        self._renewed: float | None = None                 # monotonic time of our last write
        self._record: Record | None = None
        self._complained = False
        self._thread = lease_thread("perfpilot-leader")
        self._timeout = timings.renew_deadline   # per request: a hung one ends in time

    def _read(self) -> dict[str, Any] | None:
        try:
            lease = self.coord.read_namespaced_lease(self.ld.lease, self.ld.namespace,
                                                     _request_timeout=self._timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(self.api.sanitize_for_serialization(lease))

    def _write(self, record: Record | None, spec: dict[str, Any]) -> Record:
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": self.ld.lease,
                                             "labels": {"app.kubernetes.io/part-of": "perfpilot"}},
                                "spec": spec}
        if record is not None:
            body["metadata"]["resourceVersion"] = record.resource_version
        lease = client.V1Lease.from_dict(body)
        assert lease is not None
        if record is None:
            out = self.coord.create_namespaced_lease(self.ld.namespace, lease,
                                                     _request_timeout=self._timeout)
        else:
            out = self.coord.replace_namespaced_lease(self.ld.lease, self.ld.namespace, lease,
                                                      _request_timeout=self._timeout)
        return Record.from_lease(dict(self.api.sanitize_for_serialization(out)))

    def step(self) -> None:
        """One attempt: read, decide, maybe write; updates the Leadership."""
        now = time.monotonic()
        raw = self._read()
        record = Record.from_lease(raw) if raw is not None else None
        if record is not None and (self._observed is None
                                   or self._observed[0] != record.resource_version):
            self._observed = (record.resource_version, now)
        action = decide(record, self.ld.identity,
                        self._observed[1] if self._observed else now, now)
        if action is Action.WAIT:
            assert record is not None
            self._record = record
            self.ld.set(False, record.holder)
            return
        spec = lease_spec(record, self.ld.identity, action, self.timings,
                          dt.datetime.now(dt.UTC))
        try:
            self._record = self._write(record, spec)
        except ApiException as e:
            if e.status in (409, 422):   # another replica wrote first: read again next time
                return
            raise
        self._renewed = time.monotonic()
        self._observed = (self._record.resource_version, self._renewed)
        self.ld.set(True, self.ld.identity)

    async def run(self) -> None:
        while True:
            await self.attempt()
            await asyncio.sleep(self.timings.retry)

    async def attempt(self) -> None:
        try:
            await watched(self._thread, self.step, self.timings.retry, self._check_deadline)
            self._complained = False
        except Exception as e:  # noqa: BLE001 - the API server may be away; try again
            self._report(*api_failure(e))
        self._check_deadline()

    def _check_deadline(self) -> None:
        if self.ld.is_leader and self._renewed is not None and \
                time.monotonic() - self._renewed > self.timings.renew_deadline:
            # Another replica may take over soon: stop acting before it can start.
            self.ld.set(False, "")

    def _report(self, status: int | None, what: str) -> None:
        where = f"Lease {self.ld.namespace}/{self.ld.lease}"
        if status == 404:
            what += (f" - create the namespace {self.ld.namespace!r} (the chart does) or set "
                     f"PERFPILOT_NAMESPACE to the operator's namespace")
        elif status == 403:
            what += (" - the ServiceAccount needs get/create/update on leases in its own "
                     "namespace (the chart's Role)")
        (log.error if not self._complained else log.debug)(
            f"leader election: cannot read/write {where}: {what}")
        self._complained = True

    async def release(self) -> None:
        """On a clean shutdown, hand the lease over at once (the others need not wait)."""
        if not self.ld.is_leader or self._record is None:
            return
        self.ld.set(False, "")
        record = self._record
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._thread, self._write, record, released_spec(record))
            log.info(f"released lease {self.ld.namespace}/{self.ld.lease}")
        except Exception as e:  # noqa: BLE001 - it expires by itself anyway
            log.warning(f"could not release lease {self.ld.namespace}/{self.ld.lease} "
                        f"(it expires in {self.timings.duration:g}s): {e}")


def api_failure(e: Exception) -> tuple[int | None, str]:
    """(HTTP status or None, what to log) for a failed Lease call: the API server's own message
    when it sent one, else the exception's text."""
    import json

    if not isinstance(e, ApiException):
        return None, str(e) or type(e).__name__
    try:
        message = str(json.loads(e.body or "").get("message", e.reason))
    except (TypeError, ValueError, AttributeError):
        message = str(e.reason)
    return e.status, f"{e.status} {e.reason}: {message}"
