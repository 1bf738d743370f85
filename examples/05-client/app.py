"""An app using perfpilot_client, written the way an app developer would, type-checked with
`mypy --strict` by tests/sidecar/test_client_install.py (the client's API types, never Any) and run
against an in-process sidecar by tests/sidecar/test_client_measure.py.

Runs as an ASGI app under any server (`uvicorn app:app`); with FastAPI, replace the raw `routes`
app by `FastAPI()` and keep the `app.add_middleware(PerfpilotMiddleware)` line (docs/sidecar.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import assert_type

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client import (
    AgentClient,
    AgentConfig,
    AsyncAgentClient,
    Overloaded,
    PerfpilotError,
    PerfpilotMiddleware,
    SidecarUnavailable,
    measure,
)
from perfpilot_client.asgi import Message, Receive, Scope, Send

log = logging.getLogger("app")


@measure("plan")  # recorded into the default client (the first one connected)
async def plan(question: str) -> list[str]:
    """A step of the agent's work, timed on every call."""
    await asyncio.sleep(0)
    return question.split()


@measure("tokenize")
def tokenize(text: str) -> int:
    """Plain functions are timed the same way."""
    return len(text.split())


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI app: GET /plan?q=... answers the plan as JSON; the client is connected at
    lifespan startup and closed (timings flushed) at shutdown."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    steps = await plan(scope.get("query_string", b"").decode())
    body = json.dumps({"steps": steps, "tokens": tokenize(" ".join(steps))}).encode()
    start: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


app = PerfpilotMiddleware(routes)  # one timing per request, op = "GET:/plan"


async def lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: connect at startup (failing the start if no sidecar answers), close at shutdown."""
    agent: AsyncAgentClient | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                agent = await startup()
            except SidecarUnavailable as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if agent is not None:
                await agent.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def startup() -> AsyncAgentClient:
    """Connect at start: bounded wait, typed results, typed errors."""
    agent = await AsyncAgentClient.connect(wait=10.0)
    config = await agent.get_config()
    assert_type(config, AgentConfig)
    assert_type(config.pools.batch_size, int)
    assert_type(await agent.heartbeat(), pb.HeartbeatResponse)
    assert_type(await agent.stats(), pb.GetStatsResponse)
    assert_type(await agent.cache_get("user/42"), bytes | None)
    assert_type(await agent.cache_invalidate("user/"), int)

    async def on_change(cfg: AgentConfig) -> None:
        log.info("live config generation %d", cfg.generation)

    await agent.on_config_change(on_change)
    async with agent.measure("warmup") as m:
        if not await agent.cache_get("warm"):
            m.mark_error()
    try:
        await agent.cache_put("user/42", b"{}", ttl=60)
        # dropped (in the sidecar and in every app process's L1) when user/42 changes
        await agent.cache_put("profile/42", b"{}", depends_on=["user/42"], tags=["profiles"])
        assert_type(agent.config.cache.l1.enabled, bool)
    except Overloaded:
        log.warning("sidecar busy; not cached")
    return agent


def batch_job() -> None:
    """A script or a worker thread uses the sync client the same way."""
    try:
        agent = AgentClient.connect(wait=5.0, warm=False)
    except SidecarUnavailable as exc:
        log.warning("running without the sidecar: %s", exc)
        return
    with agent:
        with agent.measure("batch"):
            hits = [agent.cache_get(f"doc/{i}") for i in range(3)]
        assert_type(hits, list[bytes | None])
        assert_type(agent.config.cache.ttl, float)
        for batch in agent.watch_events([pb.EVENT_TYPE_CONFIG_APPLIED]):
            assert_type(batch, pb.EventBatch)
            break
        try:
            agent.flush()
        except PerfpilotError:  # never raised by flush (failures are counted), shown for completeness
            pass
