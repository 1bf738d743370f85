"""Timing in the app: the decorator forms, the ASGI middleware (a raw ASGI app and a real Starlette
app, driven by direct ASGI calls) and the op-name cap, against the in-process agent."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from pathlib import Path
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_client import AgentClient, AsyncAgentClient, PerfpilotMiddleware, measure
from perfpilot_client.asgi import Message, Scope, op_name
from perfpilot_client.timings import set_default_buffer
from tests.sidecar.conftest import Agent, MakeAgent


async def op_stats(agent: Agent) -> dict[str, pb.OpStats]:
    return {o.op: o for o in (await agent.stub.GetStats(pb.GetStatsRequest())).ops}


@pytest.fixture(autouse=True)
def no_default_client() -> Iterator[None]:
    set_default_buffer(None)
    yield
    set_default_buffer(None)


@pytest.fixture
async def client(agent: Agent) -> AsyncIterator[AsyncAgentClient]:
    async with AsyncAgentClient(agent.app.socket_path, batch_size=1000, batch_wait=3600.0) as c:
        yield c


# -- decorators ---------------------------------------------------------------------------------------


async def test_decorators_on_async_and_plain_functions(agent: Agent, client: AsyncAgentClient) -> None:
    @client.measure("fetch")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise ValueError(x)
        return x * 2

    @client.measure("parse")
    def parse(text: str) -> int:
        return len(text)

    assert fetch.__name__ == "fetch" and parse.__name__ == "parse"  # functools.wraps
    assert [await fetch(i) for i in range(3)] == [0, 2, 4]
    with pytest.raises(ValueError):
        await fetch(-1)
    assert parse("abc") == 3
    await client.flush()
    ops = await op_stats(agent)
    assert (ops["fetch"].latency.count, ops["fetch"].errors) == (4, 1)
    assert (ops["parse"].latency.count, ops["parse"].errors) == (1, 0)


async def test_module_level_measure_records_into_the_connected_client(agent: Agent,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    @measure("early")  # decorated before any client exists, as a module would at import time
    def early() -> str:
        return "ok"

    with caplog.at_level(logging.WARNING, "perfpilot_client"):
        assert early() == "ok" and early() == "ok"  # not recorded: no client yet, warned once
    assert sum("before any client was connected" in r.getMessage() for r in caplog.records) == 1

    client = await AsyncAgentClient.connect(agent.app.socket_path, batch_size=1000, batch_wait=3600.0)
    try:
        assert early() == "ok"
        async with measure("block"):
            pass
        await client.flush()
    finally:
        await client.close()
    ops = await op_stats(agent)
    assert ops["early"].latency.count == 1 and ops["block"].latency.count == 1
    assert early() == "ok"  # the closed client is no longer the default: nothing sent, nothing raised


async def test_sync_client_decorator_and_default(agent: Agent) -> None:
    @measure("sync_work")
    def work() -> None:
        pass

    def app() -> int:
        client = AgentClient.connect(agent.app.socket_path, batch_size=1000, batch_wait=3600.0)
        try:
            for _ in range(5):
                work()
            timed = client.measure("sync_block")(lambda: 7)
            assert timed() == 7
            client.flush()
            return client.timings.sent
        finally:
            client.close()

    assert await asyncio.to_thread(app) == 6
    ops = await op_stats(agent)
    assert ops["sync_work"].latency.count == 5 and ops["sync_block"].latency.count == 1


# -- ASGI middleware ----------------------------------------------------------------------------------


class FakeRoute:
    """What FastAPI's router leaves in scope["route"] (path_format = the template)."""

    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


def raw_app(routes: dict[str, str]) -> Any:
    """A minimal ASGI app with a router: known paths set scope["route"], others answer 404;
    /boom raises, /fail answers 500."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("boom")
        if path in routes:
            scope["route"] = FakeRoute(routes[path])
        status = 404 if path not in routes and not path.startswith("/raw") else 500 if path == "/fail" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    return app


async def call(app: Any, path: str, method: str = "GET", type_: str = "http", query: bytes = b"") -> list[Message]:
    """One request through an ASGI app; returns what it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": type_, "method": method, "path": path, "root_path": "", "query_string": query, "headers": [],
             "scheme": "http", "server": ("test", 80), "client": ("test", 1), "http_version": "1.1",
             "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    return sent


def test_op_names_follow_the_sidecar_rules() -> None:
    assert op_name("GET", "/items/{item_id}") == "GET:/items/:item_id"
    assert op_name("POST", "/u/{uid:int}/x y") == "POST:/u/:uid/x_y"
    assert len(op_name("GET", "/" + "a" * 500)) == 128


async def test_middleware_times_every_route_of_a_raw_asgi_app(agent: Agent, client: AsyncAgentClient) -> None:
    app = PerfpilotMiddleware(raw_app({"/items/1": "/items/{item_id}", "/items/2": "/items/{item_id}",
                                       "/fail": "/fail"}), client, max_paths=2)
    await call(app, "/items/1")
    await call(app, "/items/2", method="post")
    await call(app, "/fail")
    with pytest.raises(RuntimeError):
        await call(app, "/boom")
    for i in range(4):
        await call(app, f"/raw/{i}")  # no route: raw paths, capped at 2
    await call(app, "/scanner/.env")  # 404 without a route
    await call(app, "/items/1", method="BREW")
    sent = await call(app, "/ws", type_="websocket")  # passes through untimed
    assert sent[0]["status"] == 404
    await client.flush()
    ops = await op_stats(agent)
    assert ops["GET:/items/:item_id"].latency.count == 1 and ops["POST:/items/:item_id"].latency.count == 1
    assert (ops["GET:/fail"].latency.count, ops["GET:/fail"].errors) == (1, 1)
    assert (ops["GET:/boom"].latency.count, ops["GET:/boom"].errors) == (1, 1)  # raised: an error
    assert ops["GET:/raw/0"].latency.count == 1  # /boom and /raw/0 took the 2 raw-path slots
    assert "GET:/raw/1" not in ops and ops["GET:other"].latency.count == 3
    assert ops["GET:not_found"].latency.count == 1  # /scanner/.env; the websocket is not timed
    assert ops["OTHER:/items/:item_id"].latency.count == 1


async def test_middleware_under_starlette(agent: Agent, client: AsyncAgentClient) -> None:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params["item_id"]))

    async def broken(request: Request) -> PlainTextResponse:
        raise RuntimeError("handler failed")

    async def user(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["name"])

    inner = Starlette(routes=[Route("/users/{name}", user)])
    app = Starlette(routes=[Route("/items/{item_id:int}", item), Route("/broken", broken),
                            Mount("/api", app=inner)])
    app.add_middleware(PerfpilotMiddleware, agent=client)
    for i in range(3):
        sent = await call(app, f"/items/{i}")
        assert sent[0]["status"] == 200 and sent[1]["body"] == str(i).encode()
    await call(app, "/api/users/bob")
    with pytest.raises(RuntimeError):
        await call(app, "/broken")
    await call(app, "/nothing/here")
    await client.flush()
    ops = await op_stats(agent)
    assert (ops["GET:/items/:item_id"].latency.count, ops["GET:/items/:item_id"].errors) == (3, 0)
    assert ops["GET:/api/users/:name"].latency.count == 1  # the mounted app's template behind its mount
    assert (ops["GET:/broken"].latency.count, ops["GET:/broken"].errors) == (1, 1)
    assert ops["GET:not_found"].latency.count == 1


# -- op-name cap ----------------------------------------------------------------------------------------


def batch(*ops: str, n: int = 2) -> pb.RecordTimingsRequest:
    return pb.RecordTimingsRequest(ops=[pb.OpObservations(op=op, durations_seconds=[0.01] * n, errors=1)
                                        for op in ops])


async def test_op_cap_records_known_ops_and_reports_new_names(make_agent: MakeAgent,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    agent = await make_agent(max_ops=3)
    first = await agent.stub.RecordTimings(batch("a", "b", "c"))
    assert (first.accepted, list(first.refused_ops)) == (6, [])
    with caplog.at_level(logging.WARNING, "perfpilot_agent.runtime.monitor"):
        resp = await agent.stub.RecordTimings(batch("a", "new", "b", "c", "new", n=3))
        again = await agent.stub.RecordTimings(batch("new", "c", n=1))
    assert (resp.accepted, list(resp.refused_ops), resp.refused) == (9, ["new"], 6)
    assert (again.accepted, list(again.refused_ops), again.refused) == (1, ["new"], 1)
    ops = await op_stats(agent)
    assert set(ops) == {"a", "b", "c"}
    assert [ops[o].latency.count for o in "abc"] == [5, 5, 6]
    stats = await agent.stub.GetStats(pb.GetStatsRequest())
    assert (stats.app_total.latency.count, stats.refused_op_observations) == (16, 7)
    assert sum("'new' refused" in r.getMessage() for r in caplog.records) == 1  # logged once per name


async def test_op_cap_client_logs_refused_names_once(make_agent: MakeAgent,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    agent = await make_agent(max_ops=2)
    async with AsyncAgentClient(agent.app.socket_path, batch_size=1000, batch_wait=3600.0) as client:
        with caplog.at_level(logging.WARNING, "perfpilot_client"):
            for _ in range(2):
                for op in ("known1", "known2", "extra"):
                    with client.measure(op):
                        pass
                await client.flush()
        assert client.timings.refused_ops == {"extra"}
        assert (client.timings.sent, client.timings.refused, client.timings.failed) == (4, 2, 0)
    assert sum("refused op name 'extra'" in r.getMessage() for r in caplog.records
               if r.name.startswith("perfpilot_client")) == 1
    ops = await op_stats(agent)
    assert set(ops) == {"known1", "known2"} and ops["known1"].latency.count == 2


async def test_op_names_are_full_matched(agent: Agent) -> None:
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await agent.stub.RecordTimings(batch("op\n"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_example_app_runs_against_the_agent(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/05-client/app.py under ASGI lifespan + requests, the sidecar found via PERFPILOT_SOCKET."""
    monkeypatch.delenv("PERFPILOT_ADDRESS", raising=False)
    monkeypatch.setenv("PERFPILOT_SOCKET", agent.app.socket_path)
    spec = importlib.util.spec_from_file_location(
        "example_client_app", Path(__file__).resolve().parents[2] / "examples" / "05-client" / "app.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    inbox: asyncio.Queue[Message] = asyncio.Queue()
    said: list[str] = []
    started = asyncio.Event()

    async def send(message: Message) -> None:
        said.append(message["type"])
        started.set()

    await inbox.put({"type": "lifespan.startup"})
    life = asyncio.create_task(example.app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send))
    await asyncio.wait_for(started.wait(), 30)
    assert said == ["lifespan.startup.complete"]
    for q in (b"what is up", b"a b"):
        sent = await call(example.app, "/plan", query=q)
        assert json.loads(sent[1]["body"])["steps"] == q.decode().split()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(life, 30)
    assert said[-1] == "lifespan.shutdown.complete"
    ops = await op_stats(agent)
    assert ops["GET:/plan"].latency.count == 2
    assert ops["plan"].latency.count == 2 and ops["tokenize"].latency.count == 2
    assert (ops["warmup"].latency.count, ops["warmup"].errors) == (1, 1)  # nothing cached under "warm"
    cached = await agent.stub.CacheGet(pb.CacheGetRequest(key="user/42"))
    assert (cached.found, cached.value) == (True, b"{}") and 0 < cached.ttl_remaining.seconds <= 60
