"""A fake coordination.k8s.io Lease API with the API server's optimistic concurrency
(resourceVersion: 409 on a stale write) and a clock moved by hand, for the leader election and
the sharding member Leases (tests/operator/test_leader.py, test_shards.py)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException


class FakeLeases:
    """read/list/create/replace/delete of Leases in one namespace; `down` answers 503; while
    `hung` is set, a call blocks until `released` is (a request the API server never answers).
    Every call must carry a request timeout: without one, a hung request stalls a Lease loop."""

    def __init__(self) -> None:
        self.objs: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.down = False
        self.hung = False
        self.released = threading.Event()
        self.api = client.ApiClient()

    @property
    def obj(self) -> dict[str, Any] | None:
        """The one Lease (leader election keeps exactly one), None before it exists."""
        assert len(self.objs) <= 1, list(self.objs)
        return next(iter(self.objs.values()), None)

    def hang_while(self, attempt: Callable[[], Awaitable[None]], acting: Callable[[], bool]
                   ) -> float:
        """Seconds from a hung attempt's start until `acting()` turns false; then the API
        answers again and the attempt finishes."""
        self.hung = True

        async def main() -> float:
            task = asyncio.ensure_future(attempt())
            start = time.monotonic()
            while acting():
                await asyncio.sleep(0.02)
            took = time.monotonic() - start
            self.hung = False
            self.released.set()
            await task
            return took
        return asyncio.run(main())

    def _check(self, timeout: float | None) -> None:
        assert timeout is not None and timeout > 0, "a Lease call without _request_timeout"
        if self.hung:
            self.released.wait(30)
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")

    def read_namespaced_lease(self, name: str, namespace: str,
                              _request_timeout: float | None = None) -> client.V1Lease:
        self._check(_request_timeout)
        if name not in self.objs:
            raise ApiException(status=404, reason="Not Found")
        return client.V1Lease.from_dict(copy.deepcopy(self.objs[name]))

    def list_namespaced_lease(self, namespace: str, label_selector: str,
                              _request_timeout: float | None = None) -> client.V1LeaseList:
        self._check(_request_timeout)
        key, _, value = label_selector.partition("=")
        items = [copy.deepcopy(o) for o in self.objs.values()
                 if (o["metadata"].get("labels") or {}).get(key) == value]
        return client.V1LeaseList.from_dict({"items": items})

    def _store(self, lease: client.V1Lease) -> client.V1Lease:
        self.rv += 1
        body = self.api.sanitize_for_serialization(lease)
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.objs[body["metadata"]["name"]] = body
        return client.V1Lease.from_dict(copy.deepcopy(body))

    def create_namespaced_lease(self, namespace: str, lease: client.V1Lease,
                                _request_timeout: float | None = None) -> client.V1Lease:
        self._check(_request_timeout)
        if lease.metadata.name in self.objs:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(lease)

    def replace_namespaced_lease(self, name: str, namespace: str, lease: client.V1Lease,
                                 _request_timeout: float | None = None) -> client.V1Lease:
        self._check(_request_timeout)
        if lease.metadata.resource_version != self.objs[name]["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(lease)

    def delete_namespaced_lease(self, name: str, namespace: str,
                                _request_timeout: float | None = None) -> None:
        self._check(_request_timeout)
        if self.objs.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")


class Clock:
    """A monotonic clock moved by hand (monkeypatched over the module's time.monotonic)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    @classmethod
    def over(cls, monkeypatch: Any, module: Any) -> Clock:
        """A new clock standing in for `module`'s time.monotonic for one test."""
        clock = cls()
        monkeypatch.setattr(module.time, "monotonic", clock)
        return clock
