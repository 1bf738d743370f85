"""Fixtures: an in-process agent on a temporary Unix socket, its mutual-TLS control port and its
plaintext health port on free ports, a test CA with the operator's client certificate, plus a fake
kernel pool whose calls can be held on an asyncio.Event, so tests synchronise on events and never
on sleeps.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc import aio

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_agent.app import AgentApp
from perfpilot_agent.config import Settings
from perfpilot_contract.trust import AGENT_SERVER_NAME
from tests.sidecar.pki import PKI, Pair


@dataclass
class FakeStats:
    workers: int
    busy: int = 0
    queue_depth: int = 0
    max_queue: int = 1_000_000
    completed: int = 0
    failed: int = 0
    restarts: int = 0
    warm: tuple[str, ...] = ()


class FakePool:
    """KernelPool look-alike: NumPy reference results; `gate` holds calls (and start) until set."""

    def __init__(self, workers: int, owner: FakePools) -> None:
        self.workers = workers
        self.owner = owner
        self.gate = owner.gate
        self.start_gate = owner.start_gate
        self.started_with: list[str] | None = None
        self.calls = 0
        self.resized: list[int] = []
        self.closed = False
        self.busy = 0
        self.on_event = None

    async def start(self, warm: list[str]) -> None:
        await self.start_gate.wait()
        self.started_with = list(warm)

    async def run(self, name: str, inputs: dict[str, Any], params: dict[str, float]) -> dict[str, Any]:
        from perfpilot_agent.kernels import registry

        self.calls += 1
        self.busy += 1
        async with self.owner.changed:
            self.owner.changed.notify_all()
        try:
            await self.gate.wait()
            registry.check_input_values(name, inputs, params)
            return registry.reference_numpy(name, inputs, params)
        finally:
            self.busy -= 1

    async def resize(self, workers: int) -> None:
        self.resized.append(workers)
        self.workers = workers

    def stats(self) -> FakeStats:
        return FakeStats(workers=self.workers, busy=self.busy, completed=self.calls)

    def worker_pids(self) -> list[int]:
        return []

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakePools:
    """Factory handing out FakePools; tests flip `gate` / `start_gate`."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    start_gate: asyncio.Event = field(default_factory=asyncio.Event)
    created: list[FakePool] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        self.gate.set()
        self.start_gate.set()

    def __call__(self, cfg: Any, settings: Settings) -> FakePool:
        pool = FakePool(cfg.pools.process_workers, self)
        self.created.append(pool)
        return pool

    async def wait_busy(self, n: int) -> None:
        """Return once `n` kernel calls are inside the pool (held by `gate` when it is clear)."""
        async with self.changed:
            await self.changed.wait_for(lambda: sum(p.busy for p in self.created) >= n)


@dataclass
class Agent:
    """A started in-process agent and stubs to reach it."""

    app: AgentApp
    channel: aio.Channel
    stub: pb_grpc.AgentStub
    pools: FakePools
    pki: PKI
    _channels: list[aio.Channel] = field(default_factory=list)

    def tls_channel(self, pair: Pair | None) -> aio.Channel:
        """A channel to the control port presenting `pair` (key PEM, cert PEM), or no certificate."""
        kw = {} if pair is None else {"private_key": pair[0], "certificate_chain": pair[1]}
        creds = grpc.ssl_channel_credentials(root_certificates=self.app.tls_cert, **kw)
        ch = aio.secure_channel(f"127.0.0.1:{self.app.tcp_port}", creds,
                                options=[("grpc.ssl_target_name_override", AGENT_SERVER_NAME)])
        self._channels.append(ch)
        return ch

    def tcp_stub(self, pair: Pair | None) -> pb_grpc.AgentStub:
        """A stub on the control port presenting `pair`."""
        return pb_grpc.AgentStub(self.tls_channel(pair))

    @property
    def control(self) -> pb_grpc.AgentStub:
        """The operator's view: the control port with the operator's client certificate."""
        return self.tcp_stub(self.pki.operator)

    def health_channel(self) -> aio.Channel:
        """A plaintext channel to the health port (what the kubelet's probes use)."""
        ch = aio.insecure_channel(f"127.0.0.1:{self.app.health_port}")
        self._channels.append(ch)
        return ch

    async def heartbeat_ok(self) -> pb.HeartbeatResponse:
        """The agent still serves: a Heartbeat succeeds."""
        return await self.stub.Heartbeat(pb.HeartbeatRequest(sequence=1), timeout=5)

    async def watch(self, *types: int) -> tuple[Any, Callable[[], Awaitable[pb.EventBatch]]]:
        """Subscribe; returns (call, next) once the subscription is live (first batch received)."""
        call = self.stub.WatchEvents(pb.WatchEventsRequest(types=list(types)))
        it = call.__aiter__()
        await asyncio.wait_for(it.__anext__(), 5)

        async def nxt() -> pb.EventBatch:
            return await asyncio.wait_for(it.__anext__(), 5)

        return call, nxt


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short temporary directory (Unix socket paths must stay under ~100 bytes)."""
    d = tempfile.mkdtemp(prefix="pp-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


MakeAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
def pki(sock_dir: str) -> PKI:
    """A test CA (its certificate in sock_dir/ca.crt), the operator's client pair and bad pairs."""
    return PKI.make(sock_dir)


@pytest.fixture
async def make_agent(sock_dir: str, pki: PKI) -> AsyncIterator[MakeAgent]:
    """Factory: make_agent(**Settings overrides, pools=FakePools(), ready=True) -> started Agent."""
    started: list[Agent] = []

    async def make(*, pools: FakePools | None = None, ready: bool = True, **overrides: Any) -> Agent:
        pools = pools or FakePools()
        kw: dict[str, Any] = dict(socket_path=f"{sock_dir}/a{len(started)}.sock", port=0, health_port=0,
                                  metrics_port=-1, ca_file=pki.ca_file, grace=1.0)
        kw.update(overrides)
        app = AgentApp(Settings(**kw), pool_factory=pools)
        await app.start()
        if ready:
            await asyncio.wait_for(app.wait_ready(), 30)
        channel = aio.insecure_channel(f"unix:{app.socket_path}")
        agent = Agent(app, channel, pb_grpc.AgentStub(channel), pools, pki)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        await agent.channel.close()
        for ch in agent._channels:
            await ch.close()
        await agent.app.stop(grace=1.0)


@pytest.fixture
async def agent(make_agent: MakeAgent) -> Agent:
    """A ready agent with default settings and a fake pool."""
    return await make_agent()


def rpc_error(exc_info: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a failed call."""
    return exc_info.value.code(), exc_info.value.details() or ""
