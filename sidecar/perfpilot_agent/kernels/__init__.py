"""The sidecar's kernel subsystem: numba JIT kernels on a process pool with shared memory.

Importing this package (or ``registry``, ``pool``, ``shm``, ``errors``) does not import numba;
only ``jit`` does, and it is imported inside pool workers.
"""

from .errors import KernelError, KernelInputError, PoolClosed, PoolSaturated, UnknownKernel, WorkerDied
from .pool import KernelPool, PoolStats
from .registry import KERNELS, KernelSpec, reference_numpy, validate_inputs

__all__ = [
    "KERNELS",
    "KernelError",
    "KernelInputError",
    "KernelPool",
    "KernelSpec",
    "PoolClosed",
    "PoolSaturated",
    "PoolStats",
    "UnknownKernel",
    "WorkerDied",
    "reference_numpy",
    "validate_inputs",
]
