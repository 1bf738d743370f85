"""The operator's client (clients/agents.py) against a real agent over mutual TLS on loopback:
it pins the sidecar's certificate on first contact and re-pins after the sidecar restarts."""

from __future__ import annotations

import grpc
import pytest

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator.clients.agents import AgentClients, ClientIdentity, Target, fetch_server_cert, with_retries
from tests.sidecar.conftest import MakeAgent


async def test_operator_client_configures_and_re_pins_a_restarted_sidecar(make_agent: MakeAgent) -> None:
    first = await make_agent()
    port = first.app.tcp_port
    assert port
    key, cert = first.pki.operator
    clients = AgentClients(ClientIdentity(key, cert), timeout=5)
    target = Target("127.0.0.1", port)
    try:
        assert await fetch_server_cert(target, clients.identity, 5) == first.app.tls_cert
        r = await clients.configure(target, pb.ConfigureRequest(generation=3, config=pb.AgentConfig()))
        assert (r.applied_generation, r.applied) == (3, True)
        assert (await clients.get_stats(target)).generation == 3

        # The sidecar restarts on the same address with a new key: the pinned channel fails
        # (UNAVAILABLE), the client drops it and pins the new certificate within the same call.
        await first.app.stop(grace=0.5)
        second = await make_agent(port=port)
        assert second.app.tls_cert != first.app.tls_cert
        r = await clients.configure(target, pb.ConfigureRequest(generation=3, config=pb.AgentConfig()))
        assert (r.applied_generation, r.applied) == (3, True)
        assert (await clients.heartbeat(target)).generation == 3
        # down: UNAVAILABLE (retried by the caller's with_retries), never a hang
        await second.app.stop(grace=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await with_retries(lambda: clients.get_stats(target), attempts=2)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await clients.close()


async def test_a_certificate_of_another_ca_cannot_reach_the_sidecar(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    key, cert = agent.pki.other_ca
    clients = AgentClients(ClientIdentity(key, cert), timeout=2)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await clients.get_stats(Target("127.0.0.1", agent.app.tcp_port or 0))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await clients.close()
    assert agent.app.malformed.count == 0 and agent.app.generation == 0
