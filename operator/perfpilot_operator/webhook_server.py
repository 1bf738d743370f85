"""The admission webhook server on its own thread and event loop, timed.

kopf serves admission on its one event loop, which also runs the watch handlers, the indexes and
the resync passes over every sidecar. During a burst of pod creations at scale each review waited
behind that work (docs/operator.md, "Scale"). `ThreadedWebhookServer` runs kopf's own aiohttp
server and kopf's admission function (find the handlers, run them, build the JSON patch) on a
dedicated thread with its own loop, so a review waits for the GIL at most, not for a pass.

What the admission handlers read from that thread, and why it is safe: kopf's indexes (a key
lookup, then `list()` of a store's dict values, one C call under the GIL; the values are dicts
the indexer builds anew, never mutated in place), the runtime's settings, CA bundle and feature
flags (attributes rebound, never mutated), and the live profile lookup (the blocking client on
a worker thread of this loop). Sync handlers (the profile validator) ran on kopf's executor
threads before and still do. kopf's memo store is written from here only for a profile it has
never seen (an UPDATE review); pod reviews are CREATEs with ephemeral memos. The SSL context is
never reloaded while this thread handshakes with it: ReplicaPKI puts re-issued certificates in a
new context, which the served one's server-name callback hands to the next connections.

A waiting thread gets the GIL after the switch interval; this server shortens it for the whole
process to SWITCH_INTERVAL_S (measured: the operator's share of a burst's webhook latency beyond
a bare webhook's fell from +893 ms p99 on kopf's loop to +5 ms).

Every review is timed (`perfpilot_operator_webhook_duration_seconds`, from the request's body
read to the response, on the server's side): beside the API server's own
`apiserver_admission_webhook_admission_duration_seconds` it tells the handler's time from the
call's network, TLS and queueing.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import kopf

from perfpilot_operator.logic.webhooks import POD_HANDLER_ID, PROFILE_HANDLER_ID
from perfpilot_operator.metrics import WEBHOOK_SECONDS

THREAD_NAME = "perfpilot-webhooks"
# A thread waiting for the GIL asks its holder to drop it after this long (Python's default: 5 ms).
# A review needs the GIL a few times (wake-up, read, handle, write) while kopf's thread is busy.
SWITCH_INTERVAL_S = 0.0005
KNOWN_PATHS = frozenset({POD_HANDLER_ID, PROFILE_HANDLER_ID})   # bounded metric labels


def webhook_label(path_id: str | None) -> str:
    """The metric's `webhook` label: a known handler id, else "other" (any path is routed)."""
    return path_id if path_id in KNOWN_PATHS else "other"


# kopf's own server generator, without kopf's wrapper that registers it for closing by the
# server's `async with` (on kopf's loop; it lives on the thread's loop: the thread closes it).
KOPF_SERVE: Any = kopf.WebhookServer.__call__.__wrapped__    # type: ignore[attr-defined]


class TimedWebhookServer(kopf.WebhookServer):
    """kopf's WebhookServer, every review timed into WEBHOOK_SECONDS."""

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        t0 = time.perf_counter()
        try:
            return await kopf.WebhookServer._serve(fn, request)  # noqa: SLF001 - kopf's handler
        finally:
            WEBHOOK_SECONDS.labels(webhook_label(request.match_info.get("id"))).observe(
                time.perf_counter() - t0)


class ThreadedWebhookServer(TimedWebhookServer):
    """kopf's WebhookServer (same arguments, TLS context, certificate reloads, URL), timed and
    served from a dedicated thread; the client configs it yields reach kopf's loop as before."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        kopf_loop = asyncio.get_running_loop()
        configs: asyncio.Queue[Any] = asyncio.Queue()
        started = threading.Event()
        server: dict[str, Any] = {}

        def forward(item: Any) -> None:
            try:
                kopf_loop.call_soon_threadsafe(configs.put_nowait, item)
            except RuntimeError:
                pass        # kopf's loop is closed: the operator is gone

        async def serve() -> None:
            server["loop"], server["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            try:
                async for config in KOPF_SERVE(self, fn):
                    forward(config)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - e.g. the port is taken: kopf must know
                forward(e)
                raise

        def run() -> None:
            try:
                asyncio.run(serve())
            except BaseException:  # noqa: BLE001 - forwarded to kopf's loop by serve()
                pass
            finally:
                started.set()

        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        # kopf's context variables (e.g. the queue an object logger's Events go to) come along:
        # a thread otherwise starts with an empty context.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(run,),
                                  name=THREAD_NAME, daemon=True)
        thread.start()
        try:
            while True:
                item = await configs.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            await asyncio.to_thread(started.wait, 10)
            loop, task = server.get("loop"), server.get("task")
            if loop is not None and task is not None:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass    # its loop already ended
            await asyncio.to_thread(thread.join, 10)
