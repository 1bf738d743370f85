"""The agent's own exceptions; each carries the gRPC status code it is answered with.

Handlers raise these; one wrapper in server/agent.py turns them into `context.abort(code, message)`,
so a message always says what was wrong and the code is always deliberate (never UNKNOWN).
"""

from __future__ import annotations

import grpc


class AgentError(Exception):
    """Base: an error that is answered with `code` and `str(self)` as the message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(AgentError):
    """The request is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(AgentError):
    """A bounded queue or limit is full; retry later (never an unbounded wait)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AgentError):
    """The agent cannot serve the call right now (draining, a worker died)."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(AgentError):
    """The call needs something that is not set up (for example kernels are not installed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
