"""Bearer-token check for the TCP listener (the Unix socket is trusted: only the pod can reach it).

Heartbeat and grpc.health.v1 stay open on TCP so probes and the operator's liveness checks need no
secret; every other call needs `authorization: Bearer <token>`. Tokens are compared with
hmac.compare_digest so timing does not leak how much of a guess was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

OPEN_METHODS = frozenset({
    "/perfpilot.v1.Agent/Heartbeat",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
})
"""Methods callable over TCP without a token."""


def check_token(metadata: tuple[tuple[str, str | bytes], ...] | None, token: bytes | None) -> str | None:
    """None when `metadata` carries the right bearer token, else a message saying what is wrong."""
    if token is None:
        return "this agent has no token configured (--token-file or PERFPILOT_TOKEN); control calls over TCP are disabled"
    value: str | bytes | None = None
    for key, val in metadata or ():
        if key == "authorization":
            value = val
            break
    if value is None:
        return "missing 'authorization' metadata; expected 'Bearer <token>'"
    raw = value.encode() if isinstance(value, str) else value
    scheme, _, presented = raw.partition(b" ")
    if scheme.lower() != b"bearer" or not presented.strip():
        return "malformed 'authorization' metadata; expected 'Bearer <token>'"
    if not hmac.compare_digest(presented.strip(), token):
        return "invalid bearer token"
    return None


def _unparsed(data: bytes) -> None:
    """The request deserializer of a rejected call: the body of an unauthenticated call is never parsed."""
    return None


def _rejecting(handler: grpc.RpcMethodHandler[Any, Any], message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that aborts with UNAUTHENTICATED without parsing the body."""

    async def unary(request: object, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request: object, context: aio.ServicerContext[Any, Any]):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_unparsed, response_serializer=ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, request_deserializer=_unparsed, response_serializer=ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, request_deserializer=_unparsed, response_serializer=ser)
    return grpc.stream_stream_rpc_method_handler(streaming, request_deserializer=_unparsed, response_serializer=ser)


class BearerTokenInterceptor(aio.ServerInterceptor):
    """Rejects protected calls that lack the right token; counts rejections for /metrics."""

    def __init__(self, token: bytes | None) -> None:
        self.token = token
        self.rejected = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:
            return handler
        problem = check_token(handler_call_details.invocation_metadata, self.token)
        if problem is None:
            return handler
        self.rejected += 1
        return _rejecting(handler, problem)
