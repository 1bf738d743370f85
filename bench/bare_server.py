"""The baseline server: a bare grpc.aio server that answers every unary call with empty bytes.

It is what the sidecar's latency and throughput figures are compared with: the same gRPC stack,
the same transports and the same options, but no servicer logic, no protobuf parsing, no
interceptor and no accounting. So `sidecar / bare` is the cost the sidecar adds on top of gRPC
itself. It also serves grpc.health.v1 (always SERVING) so the benchmark can wait for it the same way
it waits for the sidecar. Run: `python -m bench.bare_server --socket /tmp/x.sock --port 50123`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

EMPTY_METHOD = "/bench.Bare/Empty"
"""The method a benchmark calls on the bare server (any method name is answered the same)."""


async def _empty(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


class _Generic(grpc.GenericRpcHandler):
    """Answers every method that is not the health service with empty bytes (raw, no protobuf)."""

    def __init__(self) -> None:
        self._handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_empty)  # no (de)serializers: bytes in, bytes out

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        return self._handler


async def serve(socket_path: str | None, port: int | None) -> None:
    """Listen until SIGTERM/SIGINT, with the same server options as the sidecar."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.so_reuseport", 0),
    ]
    server = aio.server(options=options, maximum_concurrent_rpcs=10_000)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_generic_rpc_handlers((_Generic(),))  # registered after health: health keeps its methods
    if socket_path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        server.add_insecure_port(f"unix:{socket_path}")
    if port is not None and port >= 0:
        server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)
    if socket_path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default=None, help="Unix socket path")
    ap.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1")
    ns = ap.parse_args()
    asyncio.run(serve(ns.socket, ns.port))


if __name__ == "__main__":
    main()
