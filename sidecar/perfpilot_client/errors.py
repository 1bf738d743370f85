"""The client's exceptions: one small hierarchy instead of raw grpc errors.

Every app-facing call translates a `grpc.RpcError` into one of these (the original stays
available as `__cause__`), so apps catch `PerfpilotError` or a specific subclass without
importing grpc. `code` keeps the gRPC status name for logs.
"""

from __future__ import annotations

import grpc
from grpc import aio


class PerfpilotError(Exception):
    """Base of every error the client raises for a failed sidecar call."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class SidecarUnavailable(PerfpilotError):
    """The sidecar cannot be reached (not started yet, restarting, draining) or did not answer in time."""

    code = "UNAVAILABLE"


class DeadlineExceeded(SidecarUnavailable):
    """The call did not finish within the client's `timeout` (a slow kernel, or no sidecar with wait)."""

    code = "DEADLINE_EXCEEDED"


class InvalidArgument(PerfpilotError, ValueError):
    """The request was refused as malformed; the message names the field."""

    code = "INVALID_ARGUMENT"


class Overloaded(PerfpilotError):
    """A bounded queue in the sidecar is full (RESOURCE_EXHAUSTED): back off and retry later."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(PerfpilotError):
    """A call the sidecar keeps for the operator: Configure over the Unix socket (PERMISSION_DENIED),
    or a control call without the operator's client certificate (UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class FailedPrecondition(PerfpilotError):
    """The call needs something the sidecar does not have (for example kernels are not installed)."""

    code = "FAILED_PRECONDITION"


class SidecarError(PerfpilotError):
    """Any other failure (INTERNAL, UNKNOWN, ...): a bug in the sidecar or the client."""


_BY_CODE: dict[grpc.StatusCode, type[PerfpilotError]] = {
    grpc.StatusCode.UNAVAILABLE: SidecarUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def from_rpc_error(exc: grpc.RpcError, method: str) -> PerfpilotError:
    """The PerfpilotError for a failed call (raise it `from exc`)."""
    code, details = grpc.StatusCode.UNKNOWN, str(exc)
    if isinstance(exc, (grpc.Call, aio.AioRpcError)):
        code, details = exc.code(), exc.details() or details
    cls = _BY_CODE.get(code, SidecarError)
    return cls(f"{method}: {details} ({code.name})", code=code.name)
