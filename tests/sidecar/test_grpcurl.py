"""Malformed calls from an independent peer: grpcurl (Go's gRPC stack, not grpc-python).

grpcurl encodes from a schema, so it cannot send arbitrary bytes itself; a forged schema with the
same service and method names but a `bytes` field where the real request has a message makes it
send bodies the agent cannot parse. grpcurl exits with 64 + the status code of a failed call.
The binary is built once from the pinned Go module by scripts/ensure-grpcurl.sh.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from perfpilot_contract.trust import AGENT_SERVER_NAME
from tests.sidecar.conftest import Agent, MakeAgent

ROOT = Path(__file__).resolve().parents[2]
FORGED = """
syntax = "proto3";
package perfpilot.v1;
service Agent {
  rpc Configure(Forged) returns (Nothing);
  rpc RunKernel(Forged) returns (Nothing);
  rpc RecordTimings(Forged) returns (Nothing);
  rpc Heartbeat(Forged) returns (Nothing);
}
// Field 2 is a message in ConfigureRequest (config), RunKernelRequest (inputs, a map entry) and
// field 1 is a repeated message in RecordTimingsRequest (ops): bytes here are parsed as those.
message Forged { bytes one = 1; bytes two = 2; }
message Nothing {}
"""


@pytest.fixture(scope="module")
def grpcurl() -> str:
    if shutil.which("go") is None and not (Path.home() / ".cache/perfpilot/bin/grpcurl").exists():
        pytest.skip("grpcurl needs Go to build (scripts/ensure-grpcurl.sh)")
    out = subprocess.run([str(ROOT / "scripts/ensure-grpcurl.sh")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def call(grpcurl: str, target: str, method: str, body: dict[str, Any], *, proto: Path | None = None,
               unix: bool = True, tls: list[str] | None = None) -> tuple[grpc.StatusCode, str]:
    """Run grpcurl (plaintext, or with `tls` arguments); returns the call's status code and output.
    A call that never got a status (e.g. a refused TLS handshake) returns UNKNOWN."""
    if proto is None:
        schema = ["-import-path", str(ROOT / "protos"), "-proto", "perfpilot/v1/agent.proto"]
    else:
        schema = ["-import-path", str(proto.parent), "-proto", proto.name]
    args = [grpcurl, *(tls if tls is not None else ["-plaintext"]), "-max-time", "10", *schema, "-d", json.dumps(body)]
    if unix:
        args.append("-unix")
    proc = await asyncio.create_subprocess_exec(*args, target, f"perfpilot.v1.Agent/{method}",
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    rc = proc.returncode
    assert rc is not None
    codes = {c.value[0]: c for c in grpc.StatusCode}
    if rc == 0:
        return grpc.StatusCode.OK, out.decode()
    if rc < 64:                                 # grpcurl itself failed: no status
        return grpc.StatusCode.UNKNOWN, out.decode()
    assert rc - 64 in codes, out.decode()
    return codes[rc - 64], out.decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_args(agent: Agent, directory: Path, *, with_cert: bool) -> list[str]:
    """grpcurl's flags for the control port: pin its certificate; present the operator's or none."""
    (directory / "server.crt").write_bytes(agent.app.tls_cert)
    args = ["-cacert", str(directory / "server.crt"), "-servername", AGENT_SERVER_NAME]
    if with_cert:
        key, cert = agent.pki.operator
        (directory / "op.key").write_bytes(key)
        (directory / "op.crt").write_bytes(cert)
        args += ["-cert", str(directory / "op.crt"), "-key", str(directory / "op.key")]
    return args


async def test_grpcurl_malformed_calls(make_agent: MakeAgent, grpcurl: str, tmp_path: Path) -> None:
    agent = await make_agent()
    forged = tmp_path / "forged.proto"
    forged.write_text(FORGED)
    sock = agent.app.socket_path
    tcp = f"127.0.0.1:{agent.app.tcp_port}"
    health = f"127.0.0.1:{agent.app.health_port}"
    operator = tls_args(agent, tmp_path, with_cert=True)
    anonymous = tls_args(agent, tmp_path, with_cert=False)
    invalid, unauth = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED
    denied = grpc.StatusCode.PERMISSION_DENIED
    cases: list[tuple[str, str, dict[str, Any], dict[str, Any], grpc.StatusCode, str]] = [
        # (target, method, body, call options, expected code, message)
        (sock, "Configure", {"two": b64(b"\xff\xff")}, {"proto": forged}, denied, "Configure is operator-only"),
        (sock, "RunKernel", {"two": b64(b"\x0a\x05ab")}, {"proto": forged}, invalid, "not a valid perfpilot.v1.RunKernelRequest"),
        (sock, "RecordTimings", {"one": b64(b"\x0a\x02\xc3\x28")}, {"proto": forged}, invalid, "not a valid perfpilot.v1.RecordTimingsRequest"),
        (health, "Configure", {"two": b64(b"\xff\xff")}, {"proto": forged, "unix": False}, unauth,
         "control calls go to the TLS control port"),
        (tcp, "Configure", {"two": b64(b"\xff\xff")}, {"proto": forged, "unix": False, "tls": anonymous},
         grpc.StatusCode.UNKNOWN, "Failed to dial"),  # no certificate: the TLS handshake is refused
        (tcp, "Configure", {"two": b64(b"\xff\xff")}, {"proto": forged, "unix": False, "tls": operator}, invalid,
         "not a valid perfpilot.v1.ConfigureRequest"),
        (sock, "RecordTimings", {"ops": [{"op": "checkout\n", "durationsSeconds": [0.1]}]}, {}, invalid, "ops[0].op must be"),
        (sock, "RunKernel", {"kernel": "cosine_topk", "params": {"k": 1}, "inputs": {
            "query": {"dtype": "DTYPE_FLOAT32", "shape": ["0", "4611686018427387904", "4611686018427387904"], "raw": ""},
            "matrix": {"dtype": "DTYPE_FLOAT32", "shape": ["1", "1"], "raw": b64(b"\0\0\x80?")}}}, {}, invalid, "is too large"),
        (sock, "RunKernel", {"kernel": "cosine_topk", "params": {"k": 1}, "inputs": {
            "query": {"dtype": "DTYPE_FLOAT32", "shape": ["1", "1"], "shm": {"name": "..", "offset": "0"}},
            "matrix": {"dtype": "DTYPE_FLOAT32", "shape": ["1", "1"], "raw": b64(b"\0\0\x80?")}}}, {}, invalid, "not a valid segment name"),
        (sock, "CachePut", {"key": "k", "value": b64(b"v"), "ttl": "-1s"}, {}, invalid, "ttl must be between 0s and 24h, got -1s"),
        (tcp, "Configure", {"generation": "0"}, {"unix": False, "tls": operator}, invalid, "generation must be > 0"),
        (sock, "WatchEvents", {"types": [99]}, {}, invalid, "types[0] is not a known event type"),
    ]
    for target, method, body, options, code, message in cases:
        got, out = await call(grpcurl, target, method, body, **options)
        assert got == code, (method, body, out)
        assert message in out, out
    got, out = await call(grpcurl, sock, "Heartbeat", {"sequence": "7"})
    assert got == grpc.StatusCode.OK and '"sequence": "7"' in out, out
    assert os.path.exists(sock)
