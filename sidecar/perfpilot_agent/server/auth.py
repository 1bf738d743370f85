"""Who may call what, per listener (docs/sidecar.md "Authentication").

- TCP control port (TLS): the handshake already required a client certificate of the operator's
  CA (server/tls.py); `ClientCertInterceptor` checks the verified name is the operator's before
  the request body is parsed, else UNAUTHENTICATED.
- Plaintext health port: only Heartbeat and grpc.health.v1 (the kubelet's gRPC probes speak
  plaintext); anything else is UNAUTHENTICATED, unparsed, with a message naming the TLS port.
- Unix socket (the app in the pod): every data call, but Configure is operator-only:
  PERMISSION_DENIED, unparsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from perfpilot_agent.server.decoding import with_precheck
from perfpilot_agent.server.tls import problem

OPEN_METHODS = frozenset({
    "/perfpilot.v1.Agent/Heartbeat",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
})
"""The only methods of the plaintext health port."""

OPERATOR_ONLY = frozenset({"/perfpilot.v1.Agent/Configure"})
"""Refused over the Unix socket: the live config is the operator's to set, over mutual TLS."""

SOCKET_REFUSAL = ("Configure is operator-only: the perfpilot operator sets the live config over the "
                  "TCP control port with mutual TLS; the app may not call it over the Unix socket "
                  "(change the PerfProfile instead)")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


def _unparsed(data: bytes) -> None:
    """The request deserializer of a rejected call: the body of a refused call is never parsed."""
    return None


def _raw(data: bytes) -> bytes:
    """Keeps the body as bytes until the caller is known."""
    return data


def rejecting(handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
              ) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that aborts with `code` without parsing the body."""

    async def unary(request: object, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    async def streaming(request: object, context: aio.ServicerContext[Any, Any]):  # type: ignore[no-untyped-def]
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_unparsed, response_serializer=ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, request_deserializer=_unparsed, response_serializer=ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, request_deserializer=_unparsed, response_serializer=ser)
    return grpc.stream_stream_rpc_method_handler(streaming, request_deserializer=_unparsed, response_serializer=ser)


class Refusals:
    """Counts refused calls for /metrics (perfpilot_sidecar_auth_failures_total)."""

    def __init__(self) -> None:
        self.rejected = 0


class _ByMethod(aio.ServerInterceptor):
    """Refuses methods `refused(method)` says no to, with `code` and `message`, unparsed."""

    def __init__(self, counter: Refusals, refused: Callable[[str], bool], code: grpc.StatusCode,
                 message: str) -> None:
        self.counter, self.refused, self.code, self.message = counter, refused, code, message

    async def intercept_service(self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self.refused(handler_call_details.method):
            return handler
        self.counter.rejected += 1
        return rejecting(handler, self.code, self.message)


def socket_policy(counter: Refusals) -> aio.ServerInterceptor:
    """The Unix socket's rule: everything but Configure."""
    return _ByMethod(counter, OPERATOR_ONLY.__contains__, grpc.StatusCode.PERMISSION_DENIED, SOCKET_REFUSAL)


def health_policy(counter: Refusals, tls_port: int | None) -> aio.ServerInterceptor:
    """The plaintext health port's rule: Heartbeat and grpc.health.v1 only."""
    where = f"the TLS control port {tls_port}" if tls_port else "the TLS control port"
    message = (f"this plaintext port serves only Heartbeat and grpc.health.v1 (probes); control calls "
               f"go to {where} with the perfpilot operator's client certificate (mutual TLS)")
    return _ByMethod(counter, lambda m: m not in OPEN_METHODS, grpc.StatusCode.UNAUTHENTICATED, message)


class ClientCertInterceptor(aio.ServerInterceptor):
    """On the TLS control port: the verified peer must be the operator, checked before parsing."""

    def __init__(self, counter: Refusals) -> None:
        self.counter = counter

    async def intercept_service(self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler  # no client-streaming methods exist; an unknown method stays UNIMPLEMENTED
        parse = handler.request_deserializer
        counter = self.counter

        async def before(data: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            why = problem(context.auth_context())
            if why is not None:
                counter.rejected += 1
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
            return parse(data) if parse is not None else data

        return with_precheck(handler, _raw, before)
