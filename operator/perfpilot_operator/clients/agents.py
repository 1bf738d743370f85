"""gRPC client to the sidecars' control port: mutual TLS with this replica's client certificate.

The operator proves itself with a client certificate of its CA (certs.py). It authenticates a
sidecar only as far as the design allows (docs/operator.md "Trust model"): the address comes from
the pod's status in the API server, and the sidecar's self-signed certificate (a key the sidecar
made at start) is pinned on first contact for the life of the channel; a sidecar that restarts
(new key) is re-pinned after the channel fails. One channel per sidecar address, kept warm (a new
channel's first call costs milliseconds to seconds); calls have deadlines; concurrency across pods
is bounded by the caller.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from perfpilot.v1 import agent_pb2 as pb
from perfpilot.v1 import agent_pb2_grpc as pb_grpc
from perfpilot_contract.trust import AGENT_SERVER_NAME

T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class Target:
    """A sidecar's control address."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClientIdentity:
    """The operator's client certificate and key (PEM) for the sidecars' mutual TLS."""

    key: bytes
    cert: bytes


async def fetch_server_cert(target: Target, identity: ClientIdentity, timeout: float) -> bytes:
    """The PEM certificate the sidecar at `target` serves (what the channel then pins)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE       # nothing to chain to: the certificate is pinned instead
    with tempfile.TemporaryDirectory(prefix="pp-id-") as d:   # ssl loads a key pair from files only
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        cert.write_bytes(identity.cert)
        key.touch(mode=0o600)
        key.write_bytes(identity.key)
        ctx.load_cert_chain(cert, key)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.port, ssl=ctx, server_hostname=AGENT_SERVER_NAME),
        timeout)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    if not der:
        raise ConnectionError(f"{target.address} presented no TLS certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


class AgentClients:
    """Channels to many sidecars; close() when the operator stops."""

    def __init__(self, identity: ClientIdentity, *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self.identity = identity
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def stub(self, target: Target) -> pb_grpc.AgentAsyncStub:
        ch = self._channels.get(target.address)
        if ch is None:
            try:
                pinned = await fetch_server_cert(target, self.identity, self.timeout)
            except (OSError, TimeoutError) as e:    # ssl.SSLError is an OSError
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details=f"TLS to {target.address} failed: {e or type(e).__name__}"
                                           ) from None
            ch = self._channels.get(target.address)
            if ch is not None:                             # a concurrent call pinned it meanwhile
                return pb_grpc.AgentStub(ch)
            creds = grpc.ssl_channel_credentials(root_certificates=pinned, private_key=self.identity.key,
                                                 certificate_chain=self.identity.cert)
            ch = grpc.aio.secure_channel(target.address, creds, options=[
                ("grpc.ssl_target_name_override", AGENT_SERVER_NAME),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.enable_retries", 0),
                # A pod's sidecar may start after its IP appears: reconnect quickly, not after
                # gRPC's default backoff of up to two minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ])
            self._channels[target.address] = ch
        return pb_grpc.AgentStub(ch)

    def use(self, identity: ClientIdentity) -> None:
        """Present `identity` from now on (a re-issued certificate): every channel is re-made;
        the old ones close after in-flight calls had their deadline."""
        self.identity = identity
        stale = list(self._channels.values())
        self._channels.clear()
        loop = asyncio.get_running_loop()
        for ch in stale:
            loop.create_task(ch.close(grace=self.timeout))

    async def forget(self, address: str) -> None:
        """Drop a channel (the pod went away, or its sidecar restarted with a new key)."""
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def _call(self, target: Target, call: Callable[[pb_grpc.AgentAsyncStub], Awaitable[T]]) -> T:
        """`call` on the target's channel. UNAVAILABLE on a channel pinned earlier may be a
        sidecar restarted with a new key: the channel is dropped and the call made once more on
        a freshly pinned one (a sidecar that is down fails that at once: connection refused)."""
        pinned_earlier = target.address in self._channels
        try:
            return await call(await self.stub(target))
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await self.forget(target.address)
            if not pinned_earlier:
                raise
        return await call(await self.stub(target))

    async def configure(self, target: Target, request: pb.ConfigureRequest
                        ) -> pb.ConfigureResponse:
        return await self._call(target, lambda s: s.Configure(request, timeout=self.timeout))

    async def get_stats(self, target: Target) -> pb.GetStatsResponse:
        return await self._call(target, lambda s: s.GetStats(pb.GetStatsRequest(), timeout=self.timeout))

    async def heartbeat(self, target: Target) -> pb.HeartbeatResponse:
        return await self._call(target, lambda s: s.Heartbeat(pb.HeartbeatRequest(), timeout=self.timeout))

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 4,
                       base_delay: float = 0.05, max_delay: float = 1.0) -> T:
    """Retry transient gRPC failures with full-jitter exponential backoff."""
    for attempt in range(attempts):
        try:
            return await call()
        except grpc.aio.AioRpcError as e:
            if e.code() not in RETRYABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(max_delay, base_delay * 2 ** attempt)))
    raise AssertionError("unreachable")


async def bounded_gather(calls: list[Callable[[], Awaitable[T]]], *, limit: int
                         ) -> list[T | BaseException]:
    """Run calls with at most `limit` in flight; exceptions are returned, not raised."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Callable[[], Awaitable[T]]) -> T | BaseException:
        async with sem:
            try:
                return await c()
            except Exception as e:  # noqa: BLE001 - reported per pod by the caller
                return e

    return list(await asyncio.gather(*(one(c) for c in calls)))
