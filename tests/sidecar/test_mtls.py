"""Who may call what, over real TLS on loopback (docs/sidecar.md "Authentication").

Control port: only the operator's client certificate (chained to the CA file, CN perfpilot-operator);
no certificate, another CA or an expired certificate never complete the TLS handshake; a certificate
of the right CA with another name gets UNAUTHENTICATED before its body is parsed. Health port:
plaintext, Heartbeat and grpc.health.v1 only. Unix socket: everything but Configure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_agent.server.auth import ClientCertInterceptor, Refusals
from tests.sidecar.conftest import Agent, MakeAgent, rpc_error
from tests.sidecar.test_hostile import AGENT, GARBAGE, raw_call, still_serving

CONTROL = ["Configure", "GetConfig", "GetStats", "CacheInvalidate", "WatchEvents"]


async def test_operator_certificate_can_make_every_control_call(agent: Agent) -> None:
    op = agent.control
    r = await op.Configure(pb.ConfigureRequest(generation=2, config=pb.AgentConfig()))
    assert (r.applied_generation, r.applied) == (2, True)
    assert (await op.GetConfig(pb.GetConfigRequest())).generation == 2
    assert (await op.GetStats(pb.GetStatsRequest())).generation == 2
    assert (await op.Heartbeat(pb.HeartbeatRequest(sequence=3))).sequence == 3
    stream = op.WatchEvents(pb.WatchEventsRequest())
    assert isinstance(await stream.read(), pb.EventBatch)
    stream.cancel()
    assert agent.app.auth.rejected == 0


@pytest.mark.parametrize("who", ["none", "other_ca", "expired"])
async def test_no_valid_certificate_never_gets_a_stream(agent: Agent, who: str) -> None:
    """The handshake requires a client certificate of the CA: no HTTP/2 stream, nothing parsed."""
    pair = None if who == "none" else getattr(agent.pki, who)
    ch = agent.tls_channel(pair)
    for method in CONTROL:
        code = await raw_call(ch, AGENT + method, GARBAGE[0])
        assert code == grpc.StatusCode.UNAVAILABLE, (method, code)
    assert agent.app.malformed.count == 0 and agent.app.generation == 0
    await still_serving(agent)


async def test_right_ca_wrong_name_is_unauthenticated_before_parsing(agent: Agent) -> None:
    ch = agent.tls_channel(agent.pki.not_operator)
    for method in CONTROL:
        for body in GARBAGE[:3]:
            assert await raw_call(ch, AGENT + method, body) == grpc.StatusCode.UNAUTHENTICATED, method
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await pb_grpc.AgentStub(ch).GetStats(pb.GetStatsRequest())
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "'someone-else' is not the perfpilot operator's" in details
    assert agent.app.malformed.count == 0            # no refused body reached the parser
    assert agent.app.auth.rejected == len(CONTROL) * 3 + 1
    # the operator's garbage does reach the parser: INVALID_ARGUMENT, after authentication
    op = agent.tls_channel(agent.pki.operator)
    assert await raw_call(op, AGENT + "Configure", GARBAGE[0]) == grpc.StatusCode.INVALID_ARGUMENT
    assert agent.app.malformed.count == 1


async def test_socket_refuses_configure_and_serves_data_calls(agent: Agent) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await agent.stub.Configure(pb.ConfigureRequest(generation=2**62, config=pb.AgentConfig()))
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "operator-only" in details and "mutual TLS" in details
    assert await raw_call(agent.channel, AGENT + "Configure", GARBAGE[0]) == grpc.StatusCode.PERMISSION_DENIED
    assert agent.app.generation == 0 and agent.app.malformed.count == 0
    assert (await agent.stub.GetConfig(pb.GetConfigRequest())).generation == 0
    assert (await agent.stub.GetStats(pb.GetStatsRequest())).generation == 0
    await agent.stub.CachePut(pb.CachePutRequest(key="k", value=b"v"))
    assert (await agent.stub.CacheGet(pb.CacheGetRequest(key="k"))).value == b"v"
    stream = agent.stub.WatchEvents(pb.WatchEventsRequest())
    assert isinstance(await stream.read(), pb.EventBatch)
    stream.cancel()
    await still_serving(agent)


async def test_health_port_serves_probes_only(agent: Agent) -> None:
    ch = agent.health_channel()
    assert (await pb_grpc.AgentStub(ch).Heartbeat(pb.HeartbeatRequest(sequence=5))).sequence == 5
    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await pb_grpc.AgentStub(ch).Configure(pb.ConfigureRequest(generation=5))
    code, details = rpc_error(ei)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"TLS control port {agent.app.tcp_port}" in details
    for method in CONTROL + ["RunKernel", "CachePut"]:
        assert await raw_call(ch, AGENT + method, GARBAGE[0]) == grpc.StatusCode.UNAUTHENTICATED, method
    assert agent.app.generation == 0 and agent.app.malformed.count == 0


async def test_without_a_ca_file_there_is_no_control_port(make_agent: MakeAgent,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    agent = await make_agent(ca_file="")
    assert agent.app.tcp_port is None and agent.app.health_port
    assert "TCP control port is off" in caplog.text
    assert (await agent.stub.Heartbeat(pb.HeartbeatRequest(sequence=1))).sequence == 1


async def test_an_unusable_ca_file_fails_the_start(make_agent: MakeAgent, tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        await make_agent(ca_file=str(bad))
    with pytest.raises(ValueError, match="perfpilot.io/ca-bundle"):
        await make_agent(ca_file=str(tmp_path / "missing.crt"))


def test_the_body_of_an_unauthenticated_call_is_never_parsed() -> None:
    """The interceptor keeps the body as bytes until the peer's verified name is checked."""
    parsed: list[bytes] = []

    def deserializer(data: bytes) -> Any:
        parsed.append(data)
        return pb.ConfigureRequest.FromString(data)

    async def behaviour(request: Any, context: Any) -> str:
        return f"served {type(request).__name__}"

    handler = grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=deserializer)

    class Details:
        method = AGENT + "Configure"
        invocation_metadata = ()

    class Context:
        def __init__(self, auth: dict[str, list[bytes]]) -> None:
            self.auth, self.aborted = auth, None

        def auth_context(self) -> dict[str, list[bytes]]:
            return self.auth

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.aborted = (code, details)
            raise aio.AbortError()

    async def continuation(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return handler

    async def run() -> None:
        counter = Refusals()
        wrapped = await ClientCertInterceptor(counter).intercept_service(continuation, Details())  # type: ignore[arg-type]
        assert wrapped is not None
        body = wrapped.request_deserializer(b"\x10\x07")
        assert parsed == []                                   # the wire bytes are kept as they are
        anon = Context({"transport_security_type": [b"ssl"]})
        with pytest.raises(aio.AbortError):
            await wrapped.unary_unary(body, anon)
        assert anon.aborted is not None and anon.aborted[0] == grpc.StatusCode.UNAUTHENTICATED
        assert parsed == [] and counter.rejected == 1
        operator = Context({"transport_security_type": [b"ssl"], "x509_common_name": [b"perfpilot-operator"]})
        assert await wrapped.unary_unary(body, operator) == "served ConfigureRequest"
        assert parsed == [b"\x10\x07"]

    asyncio.run(run())
