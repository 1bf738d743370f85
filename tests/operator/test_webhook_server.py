"""The admission server on its own thread: reviews reach kopf's admission function on that
thread (not on the caller's loop, which stays free), while the caller's loop is busy; every
review is timed under a bounded label; stopping it frees the port; a port that cannot be bound
fails the caller as kopf's own server does."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
import time
from typing import Any

import aiohttp
import pytest

from perfpilot_operator.logic.webhooks import POD_HANDLER_ID
from perfpilot_operator.metrics import REGISTRY
from perfpilot_operator.webhook_server import THREAD_NAME, ThreadedWebhookServer, webhook_label


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reviews(label: str) -> float:
    return REGISTRY.get_sample_value("perfpilot_operator_webhook_duration_seconds_count",
                                     {"webhook": label}) or 0.0


def _review(uid: str) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid}}


# Stands for kopf's own context variables (e.g. where an object logger's Events are queued).
CALLERS = contextvars.ContextVar[str]("callers")


async def test_reviews_are_served_on_the_servers_thread_while_the_callers_loop_is_blocked(
) -> None:
    seen: list[tuple[str, str, str]] = []

    async def fn(request: Any, *, webhook: str | None = None, **_: Any) -> dict[str, Any]:
        seen.append((threading.current_thread().name, str(webhook), CALLERS.get("unset")))
        return {"response": {"uid": request["request"]["uid"], "allowed": True}}

    CALLERS.set("kopf's")         # the handlers see the caller's context variables
    port = _free_port()
    server = ThreadedWebhookServer(addr="127.0.0.1", port=port, host="127.0.0.1", insecure=True)
    async with server:            # as kopf runs it: closed when the operator stops
        await _serve_one(server, fn, port)
    assert not any(t.name == THREAD_NAME for t in threading.enumerate())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))   # the port is free again
    assert seen == [(THREAD_NAME, POD_HANDLER_ID, "kopf's")]


async def _serve_one(server: ThreadedWebhookServer, fn: Any, port: int) -> None:
    configs = server(fn)
    config = await configs.__anext__()
    assert config["url"] == f"http://127.0.0.1:{port}"
    before = _reviews(POD_HANDLER_ID)

    def post(path: str, uid: str) -> Any:
        async def go() -> Any:
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://127.0.0.1:{port}/{path}", json=_review(uid)) as r:
                return r.status, await r.json()
        return asyncio.run(go())

    # The caller's loop (kopf's, in the operator) is blocked for the whole request: the review
    # is answered anyway, by the server's own loop.
    box: list[Any] = []
    client = threading.Thread(target=lambda: box.append(post(POD_HANDLER_ID, "u-1")))
    client.start()
    client.join(0.1)
    time.sleep(1.0)               # blocks this loop, as a long pass would block kopf's
    client.join(10)
    assert box == [(200, {"response": {"uid": "u-1", "allowed": True}})]
    assert _reviews(POD_HANDLER_ID) == before + 1


def test_the_metric_label_is_bounded_to_the_known_webhooks() -> None:
    assert webhook_label(POD_HANDLER_ID) == POD_HANDLER_ID
    assert webhook_label("anything/a/caller/sends") == "other"
    assert webhook_label(None) == "other"


async def test_a_port_that_cannot_be_bound_fails_the_caller() -> None:
    async def fn(request: Any, **_: Any) -> dict[str, Any]:
        raise AssertionError("never called")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with ThreadedWebhookServer(addr="127.0.0.1", port=port, insecure=True) as server:
            with pytest.raises(OSError):
                await asyncio.wait_for(server(fn).__anext__(), 10)
    assert not any(t.name == THREAD_NAME for t in threading.enumerate())
