"""Client-side memory of the operator's channels to sidecars: mutual TLS vs plaintext.

    .venv/bin/python -m bench.channel_bench [N]       # prints JSON; used by bench/scale_bench.py

The operator keeps one warm gRPC channel per sidecar (clients/agents.py), so this is the slope of
its memory per injected pod that sharding divides. N channels are opened with the operator's own
code (AgentClients: the pinned sidecar certificate, the operator's client certificate, the same
channel options) to a server in another process that presents a sidecar's self-signed
certificate (perfpilot_agent.server.tls.self_signed) and requires a client certificate; each
channel is connected (channel_ready). Value: VmRSS growth of this process per channel.
Baseline: the same for plaintext channels (grpc.aio.insecure_channel with a subchannel of its
own, as a channel to another pod's IP has; the mutual-TLS ones differ by their pinned
certificate, so gRPC never shares their connections either).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import sys
from typing import Any

from bench.common import rss_mb

COUNT = 300


async def _serve(tls: bool, ca_pem: bytes, ports: Any) -> None:
    import grpc

    from perfpilot_agent.server.tls import self_signed

    server = grpc.aio.server()
    if tls:
        key, cert = self_signed()
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca_pem,
                                            require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports.put(port)
    await server.wait_for_termination()


def _server(tls: bool, ca_pem: bytes, ports: Any) -> None:
    asyncio.run(_serve(tls, ca_pem, ports))


async def _measure(tls: bool, n: int) -> float:
    """KB of this process's RSS per connected channel."""
    import datetime as dt

    import grpc

    from perfpilot_operator.certs import issue, new_authority
    from perfpilot_operator.clients.agents import AgentClients, ClientIdentity, Target

    from cryptography.hazmat.primitives import serialization

    now = dt.datetime.now(dt.UTC)
    ca = new_authority(now)
    key, cert = issue(ca, "perfpilot-operator", client=True, now=now)
    ca_pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_server, args=(tls, ca_pem, ports), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=60)
        target = Target("127.0.0.1", port)
        clients = AgentClients(ClientIdentity(key=key, cert=cert), timeout=10)
        # One channel first: the process's one-off costs (TLS library, event engine) are not
        # counted per channel.
        channels: list[Any] = []

        async def one() -> None:
            if tls:
                await clients.stub(target)
                ch = clients._channels.pop(target.address)   # noqa: SLF001 - keep it, make the next
            else:   # a subchannel of its own, as a channel to another pod's IP has
                ch = grpc.aio.insecure_channel(target.address,
                                               options=[("grpc.use_local_subchannel_pool", 1)])
            await asyncio.wait_for(ch.channel_ready(), 10)
            channels.append(ch)

        await one()
        before = rss_mb()
        for _ in range(n):
            await one()
        grown = rss_mb() - before
        for ch in channels:
            await ch.close()
        return grown * 1024 / n
    finally:
        server.kill()


def run(n: int = COUNT) -> dict[str, float]:
    return {"mtls_kb": asyncio.run(_measure(True, n)),
            "plain_kb": asyncio.run(_measure(False, n)), "channels": float(n)}


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else COUNT)))
