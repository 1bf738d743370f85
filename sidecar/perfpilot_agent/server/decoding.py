"""Requests that do not parse are answered INVALID_ARGUMENT, never UNKNOWN.

grpc-python runs a method's request_deserializer before the handler, and a DecodeError there
becomes UNKNOWN with an ERROR traceback per call. This interceptor wraps every handler's
deserializer: bytes that do not parse become a `Malformed` marker instead of an exception, and
the wrapped behaviour answers it with INVALID_ARGUMENT naming the message type. The first
malformed request is logged at INFO, later ones at DEBUG (a hostile client cannot flood the log).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse as `type_name`."""

    type_name: str
    reason: str

    def message(self) -> str:
        """The INVALID_ARGUMENT details."""
        return f"request body is not a valid {self.type_name} message: {self.reason}"


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is a bound classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def guard_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning Malformed instead of raising on bytes that do not parse."""
    if deserializer is None:
        return None
    type_name = _type_name(deserializer)

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested groups
            return Malformed(type_name, str(exc)[:200] or type(exc).__name__)

    return parse


class DecodeGuard:
    """Counts malformed requests and logs the first one at INFO, the rest at DEBUG.

    `record(method, code, seconds)` (RpcStats.record) counts them in /metrics with the other calls.
    """

    def __init__(self, record: Callable[[str, str, float], None] | None = None) -> None:
        self.count = 0
        self.record = record

    async def refuse(self, method: str, bad: Malformed, context: aio.ServicerContext[Any, Any]) -> None:
        """Abort the call with INVALID_ARGUMENT."""
        self.count += 1
        if self.record is not None:
            self.record(method.rsplit("/", 1)[-1], "INVALID_ARGUMENT", 0.0)
        if self.count == 1:
            log.info("%s: malformed request refused (%s); further ones are logged at DEBUG", method, bad.reason)
        else:
            log.debug("%s: malformed request refused (%s)", method, bad.reason)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.message())


class DecodeInterceptor(aio.ServerInterceptor):
    """Installs guarded deserializers on every handler of the server it is attached to."""

    def __init__(self, guard: DecodeGuard) -> None:
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler  # no client-streaming methods exist; leave anything else untouched
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """A handler of the same shape whose behaviour first refuses Malformed requests."""
        guard = self.guard

        async def before(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Malformed):
                await guard.refuse(method, request, context)
            return request

        return with_precheck(handler, guard_deserializer(handler.request_deserializer), before)


Precheck = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
"""Runs before a behaviour: returns the request to hand on, or aborts the call."""


def with_precheck(handler: grpc.RpcMethodHandler[Any, Any], deserializer: Callable[[bytes], Any] | None,
                  before: Precheck) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary-request handler of the same shape as `handler`, with `deserializer`, whose behaviour
    awaits `before(request, context)` and passes its result to the original behaviour."""
    kw: dict[str, Any] = dict(request_deserializer=deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner_unary: Any = handler.unary_unary  # an async behaviour on an aio server

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            return await inner_unary(await before(request, context), context)

        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    inner_stream: Any = handler.unary_stream
    if not inspect.isasyncgenfunction(inner_stream):  # writes with context.write (grpc.health.v1 Watch)

        async def writing(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            await inner_stream(await before(request, context), context)

        return grpc.unary_stream_rpc_method_handler(writing, **kw)

    async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for item in inner_stream(await before(request, context), context):
            yield item

    return grpc.unary_stream_rpc_method_handler(streaming, **kw)
