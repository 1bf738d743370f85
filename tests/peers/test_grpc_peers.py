"""The sidecar as Go's gRPC stack sees it: grpc-health-probe (what Kubernetes' gRPC probes do)
and grpcurl (a client built only from protos/), against a real in-process agent (the server,
health service and listeners of perfpilot_agent; kernels faked, see tests/sidecar/conftest.py)
on its Unix socket, its plaintext health port (what the kubelet probes) and its mutual-TLS control
port.

Bytes that do not parse are covered by tests/sidecar/test_grpcurl.py and test_hostile.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.peers.conftest import ROOT, peer
from tests.sidecar.conftest import Agent, FakePools, MakeAgent

SERVICE = "perfpilot.v1.Agent"
# grpc-health-probe's exit codes (its README): 0 SERVING, 2 connection failed, 3 the RPC failed,
# 4 the RPC succeeded but the status is not SERVING.
SERVING, RPC_FAILED, NOT_SERVING = 0, 3, 4
PROTO = ["-import-path", str(ROOT / "protos"), "-proto", "perfpilot/v1/agent.proto"]


async def run(*args: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of a peer run as a subprocess (the agent shares our loop)."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def targets(agent: Agent) -> dict[str, str]:
    return {"unix": f"unix://{agent.app.socket_path}", "health": f"127.0.0.1:{agent.app.health_port}"}


async def probe(agent: Agent, service: str = "") -> dict[str, tuple[int, str]]:
    """grpc-health-probe on both listeners: listener -> (exit code, output)."""
    exe = str(peer("grpc-health-probe"))
    return {name: await run(exe, "-addr", addr, "-service", service, "-connect-timeout", "5s",
                            "-rpc-timeout", "5s")
            for name, addr in targets(agent).items()}


async def test_health_probe_follows_readiness(make_agent: MakeAgent) -> None:
    """NOT_SERVING while warm kernels compile (held here), SERVING once ready, for the overall
    status a kubelet probe asks for and for the Agent service; unknown names are an error."""
    pools = FakePools()
    pools.start_gate.clear()
    agent = await make_agent(pools=pools, ready=False,
                             initial_config={"kernels": {"warm": ["weighted_mean"]}})
    for service in ("", SERVICE):
        for listener, (code, out) in (await probe(agent, service)).items():
            assert code == NOT_SERVING and "NOT_SERVING" in out, (listener, service, out)
    pools.start_gate.set()
    await asyncio.wait_for(agent.app.wait_ready(), 30)
    for service in ("", SERVICE):
        for listener, (code, out) in (await probe(agent, service)).items():
            assert code == SERVING and "SERVING" in out, (listener, service, out)
    for listener, (code, out) in (await probe(agent, "perfpilot.v1.Nope")).items():
        assert code == RPC_FAILED and "NotFound" in out, (listener, out)


def heartbeats(agent: Agent) -> int:
    return sum(n for (method, _), n in agent.app.rpc_stats.calls.items() if "Heartbeat" in method)


async def grpcurl(target: str, method: str, body: str, *extra: str) -> tuple[int, str]:
    unix = ["-unix"] if target.startswith("unix://") else []
    addr = target.removeprefix("unix://")
    return await run(str(peer("grpcurl")), "-plaintext", "-max-time", "10", *PROTO, *unix,
                     *extra, "-d", body, addr, method)


async def test_grpcurl_heartbeat_from_the_proto_files(make_agent: MakeAgent) -> None:
    """A client that knows only protos/ gets an answer on both plaintext listeners (Heartbeat
    needs no certificate on the health port: the probes' and anyone's liveness check)."""
    agent = await make_agent()
    before = heartbeats(agent)
    for listener, target in targets(agent).items():
        code, out = await grpcurl(target, f"{SERVICE}/Heartbeat", '{"sequence": "41"}')
        assert code == 0, (listener, out)
        reply = json.loads(out)
        assert reply["sequence"] == "41" and reply["state"] == "AGENT_STATE_READY", (listener, reply)
    assert heartbeats(agent) == before + 2   # counted: the malformed-JSON test relies on it


async def test_grpcurl_control_calls_need_the_operators_certificate(make_agent: MakeAgent,
                                                                     tmp_path: Path) -> None:
    """grpcurl without a certificate: UNAUTHENTICATED on the plaintext port (a gRPC status naming the
    TLS port), a refused TLS handshake on the control port; with the operator's certificate the
    same call is served."""
    agent = await make_agent()
    health, tcp = f"127.0.0.1:{agent.app.health_port}", f"127.0.0.1:{agent.app.tcp_port}"
    code, out = await grpcurl(health, f"{SERVICE}/GetConfig", "{}")
    assert code == 64 + 16 and "Unauthenticated" in out and "TLS control port" in out, (code, out)
    (tmp_path / "server.crt").write_bytes(agent.app.tls_cert)
    pin = ["-cacert", str(tmp_path / "server.crt"), "-servername", "perfpilot-agent"]
    exe = str(peer("grpcurl"))
    code, out = await run(exe, *pin, "-max-time", "10", *PROTO, "-d", "{}", tcp, f"{SERVICE}/GetConfig")
    assert 0 < code < 64 and "Failed to dial" in out, (code, out)     # no certificate, no stream
    key, cert = agent.pki.operator
    (tmp_path / "op.key").write_bytes(key)
    (tmp_path / "op.crt").write_bytes(cert)
    code, out = await run(exe, *pin, "-cert", str(tmp_path / "op.crt"), "-key", str(tmp_path / "op.key"),
                          "-max-time", "10", *PROTO, "-d", "{}", tcp, f"{SERVICE}/GetConfig")
    assert code == 0 and "config" in out, (code, out)
    assert agent.app.generation == 0


BAD_JSON = [
    # (request body, what grpcurl names): refused before anything is sent (a wrong type is named
    # by its value: grpcurl's message has no field name for those)
    ('{"sequence": "abc"}', '"abc"'),
    ('{"sequence": 1.5}', '"1.5"'),
    ('{"sequence": -1}', '"-1"'),
    ('{"sequnce": 1}', "sequnce"),
    ('{"sequence": 1', "EOF"),
]


@pytest.mark.parametrize(("body", "named"), BAD_JSON, ids=[b for b, _ in BAD_JSON])
async def test_grpcurl_refuses_malformed_json_client_side(make_agent: MakeAgent, body: str,
                                                          named: str) -> None:
    agent = await make_agent()
    before = heartbeats(agent)
    code, out = await grpcurl(f"unix://{agent.app.socket_path}", f"{SERVICE}/Heartbeat", body)
    # grpcurl exits 64 + the status code when a call was made; below 64 it never called.
    assert 0 < code < 64 and "error getting request data" in out and named in out, (code, out)
    assert heartbeats(agent) == before, "the malformed request reached the sidecar"
    assert (await agent.heartbeat_ok()).sequence == 1


async def test_the_proto_files_describe_the_service_reflection_is_off(
        make_agent: MakeAgent) -> None:
    """The sidecar registers no server reflection (nothing to add to its surface); protos/ is the
    schema clients use, and it describes every method the server answers."""
    agent = await make_agent()
    exe, sock = str(peer("grpcurl")), agent.app.socket_path
    code, out = await run(exe, "-plaintext", "-unix", sock, "list")
    assert code != 0 and "does not support the reflection API" in out, out
    code, out = await run(exe, *PROTO, "list", SERVICE)
    assert code == 0, out
    methods = sorted(line.rsplit(".", 1)[1] for line in out.split())
    assert "Heartbeat" in methods and "Configure" in methods, methods
    for method in methods:   # each one is served: a wrong body, never UNIMPLEMENTED
        code, out = await grpcurl(f"unix://{sock}", f"{SERVICE}/{method}", "{}", "-max-time", "2")
        assert "Unimplemented" not in out and code != 64 + 12, (method, out)


def test_grpc_peer_binaries_are_the_pinned_versions() -> None:
    script = (ROOT / "scripts/ensure-peers.sh").read_text()
    pins = dict(line.split("=", 1) for line in script.splitlines()
                if line.endswith(tuple("0123456789")) and "_VERSION=" in line)
    out = subprocess.run([str(peer("grpcurl")), "-version"], capture_output=True, text=True)
    assert pins["GRPCURL_VERSION"] in out.stdout + out.stderr
    stamp = Path(peer("grpc-health-probe")).parents[1] / "stamps" / "grpc-health-probe"
    assert stamp.read_text().strip() == f"v{pins['GRPC_HEALTH_PROBE_VERSION']}"
