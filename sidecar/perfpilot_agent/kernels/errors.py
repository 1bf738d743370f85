"""Errors raised by the kernel subsystem.

The gRPC server maps them to status codes: KernelInputError (and UnknownKernel) ->
INVALID_ARGUMENT, PoolSaturated and StagingFailed -> RESOURCE_EXHAUSTED, WorkerDied, PoolClosed
and SegmentLost -> UNAVAILABLE, any other KernelError -> INTERNAL.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base class of every error the kernel subsystem raises on purpose."""


class KernelInputError(KernelError):
    """A kernel call's inputs or parameters are invalid; the message names the input and the problem."""


class UnknownKernel(KernelInputError):
    """The requested kernel name is not registered."""


class PoolSaturated(KernelError):
    """The pool's bounded queue is full; raised at once, never after a wait."""


class WorkerDied(KernelError):
    """The worker process running the call died (message names pid and exit code or signal)."""


class PoolClosed(KernelError):
    """The pool is not started, is closing or is closed."""


class SegmentLost(KernelError):
    """A shared-memory segment of the call was truncated or removed by another process."""


class StagingFailed(KernelError):
    """The pool could not put a call's arrays in shared memory (e.g. /dev/shm full: ENOSPC).

    Only that call fails: the worker is healthy and keeps serving."""


# Names a worker may send back; the parent re-raises the same type.
BY_NAME: dict[str, type[KernelError]] = {
    cls.__name__: cls
    for cls in (KernelError, KernelInputError, UnknownKernel, PoolSaturated, WorkerDied, PoolClosed, SegmentLost,
                StagingFailed)
}
