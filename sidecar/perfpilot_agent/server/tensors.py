"""Tensor wire format <-> NumPy, with every size checked before any allocation.

Inline tensors are raw little-endian bytes viewed in place (np.frombuffer, no copy). Large arrays
travel as shared-memory handles: the agent maps the caller's segment read-only and views it
(see shm_attach for why it does not use SharedMemory to attach).
Outputs placed in shared memory are created here, handed to the caller (who unlinks them) and
reaped by the agent after a grace period if the caller never did.
Imported lazily (first RunKernel), so a heartbeat-only agent never loads NumPy.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import time
from collections.abc import Mapping
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import _posixshmem  # type: ignore[import-not-found]  # POSIX shm_open/shm_unlink, as multiprocessing uses
import numpy as np

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument
from perfpilot_contract import dtypes

DTYPES: dict[int, np.dtype[Any]] = {d.code: np.dtype(d.numpy) for d in dtypes.DTYPES}
CODES: dict[str, int] = {dt.str: code for code, dt in DTYPES.items()}
MAX_DIMS = 8
_SHM_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


class Segment:
    """A caller's segment mapped read-only; never registered with our resource_tracker."""

    def __init__(self, name: str) -> None:
        fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
        try:
            self.size = os.fstat(fd).st_size
            self.buf = mmap.mmap(fd, self.size, prot=mmap.PROT_READ) if self.size else None
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unmap (raises BufferError while a view is alive)."""
        if self.buf is not None:
            self.buf.close()


def shm_attach(name: str) -> Segment:
    """Map a caller-owned segment read-only.

    multiprocessing.shared_memory.SharedMemory would register the segment with this process's
    resource_tracker on Python < 3.13 (which would unlink it when the agent exits, and double-count
    it when caller and agent share a process), so the agent maps it directly instead. Read-only
    also means a kernel can never write into the app's memory.
    """
    return Segment(name)


_DEFERRED: list[Segment] = []
"""Segments whose close() failed because a view was still alive (e.g. held by a traceback)."""


def _try_close(seg: Segment) -> bool:
    try:
        seg.close()
        return True
    except BufferError:
        return False


class Attachments:
    """Segments attached for one call; closed when the call ends.

    A view can outlive the call (an exception's traceback holds it), so segments that cannot be
    closed yet are kept and retried on later calls instead of failing noisily in __del__.
    """

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def close(self) -> None:
        """Close this call's segments and retry earlier deferred ones."""
        pending = _DEFERRED[:] + self.segments
        _DEFERRED.clear()
        self.segments.clear()
        _DEFERRED.extend(seg for seg in pending if not _try_close(seg))


def decode(
    name: str,
    t: pb.Tensor,
    *,
    max_bytes: int,
    attachments: Attachments,
    finite_check_max_bytes: int = 1 << 20,
) -> np.ndarray:
    """Validate one input tensor and return a read-only view of its elements.

    NaN/inf are rejected here for tensors up to `finite_check_max_bytes`; larger ones are checked
    by the pool in a worker, so a 300 MB input never stalls the event loop.
    """
    path = f"inputs[{name!r}]"
    if t.dtype == pb.DTYPE_UNSPECIFIED:
        raise InvalidArgument(f"{path}.dtype is unspecified; use one of {dtypes.NAMES}")
    dtype = DTYPES.get(t.dtype)
    if dtype is None:
        raise InvalidArgument(f"{path}.dtype has unknown value {t.dtype}")
    if len(t.shape) > MAX_DIMS:
        raise InvalidArgument(f"{path}.shape has {len(t.shape)} dimensions; at most {MAX_DIMS} are allowed")
    for i, d in enumerate(t.shape):
        if d < 0:
            raise InvalidArgument(f"{path}.shape[{i}] is negative ({d})")
    count = math.prod(t.shape)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise InvalidArgument(
            f"{path} is too large: shape {list(t.shape)} {dtype.name} needs {_fmt_bytes(nbytes)}, "
            f"limit is {_fmt_bytes(max_bytes)} (--max-tensor-bytes)"
        )
    which = t.WhichOneof("data")
    if which == "raw":
        if len(t.raw) != nbytes:
            raise InvalidArgument(
                f"{path} has {len(t.raw)} bytes of data but shape {list(t.shape)} {dtype.name} needs {nbytes}"
            )
        arr = np.frombuffer(t.raw, dtype=dtype, count=count).reshape(tuple(t.shape))
    elif which == "shm":
        arr = _from_shm(path, t.shm, dtype, tuple(t.shape), count, nbytes, attachments)
    else:
        raise InvalidArgument(f"{path} has no data; set raw or shm")
    if dtype.kind == "f" and 0 < nbytes <= finite_check_max_bytes and not np.isfinite(arr).all():
        del arr  # do not let the traceback pin a shared-memory view
        raise InvalidArgument(f"{path} contains NaN or infinity")
    return arr


def _from_shm(
    path: str,
    ref: pb.SharedMemoryRef,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    count: int,
    nbytes: int,
    attachments: Attachments,
) -> np.ndarray:
    if not _SHM_NAME_RE.match(ref.name):
        raise InvalidArgument(f"{path}.shm.name is not a valid segment name: {ref.name[:80]!r}")
    if ref.offset % dtype.itemsize:
        raise InvalidArgument(f"{path}.shm.offset {ref.offset} is not a multiple of the item size {dtype.itemsize}")
    try:
        seg = shm_attach(ref.name)
    except FileNotFoundError:
        raise InvalidArgument(f"{path}.shm: shared memory segment {ref.name!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path}.shm: cannot attach to segment {ref.name!r}: {exc}") from None
    attachments.segments.append(seg)
    if ref.offset + nbytes > seg.size:
        raise InvalidArgument(
            f"{path}.shm: offset {ref.offset} + {nbytes} bytes exceeds the segment size {seg.size}"
        )
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(seg.buf, dtype=dtype, count=count, offset=ref.offset).reshape(shape)  # type: ignore[arg-type]


def decode_params(params: Mapping[str, float]) -> dict[str, float]:
    """Scalar parameters must be finite."""
    out: dict[str, float] = {}
    for key, value in params.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"params[{key!r}] must be finite, got {value}")
        out[key] = value
    return out


class OutputSegments:
    """Shared-memory segments the agent created for outputs; reaped if the caller never unlinks."""

    def __init__(self, *, grace: float = 60.0) -> None:
        self.grace = grace
        self.pending: dict[str, float] = {}

    def create(self, arr: np.ndarray) -> pb.SharedMemoryRef:
        """Copy `arr` into a new segment the caller will own."""
        seg = shared_memory.SharedMemory(create=True, size=max(arr.nbytes, 1))
        resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
        # The app container runs as another uid and opens the segment read-write, then unlinks
        # it: 0600 would refuse it. /dev/shm is the pod's own tmpfs, shared with the app only.
        os.fchmod(seg._fd, 0o666)  # type: ignore[attr-defined]
        try:
            view = np.ndarray(arr.shape, dtype=arr.dtype, buffer=seg.buf)
            view[...] = arr
            del view
        finally:
            seg.close()
        self.pending[seg.name] = time.monotonic() + self.grace
        return pb.SharedMemoryRef(name=seg.name, offset=0)

    def reap(self, *, everything: bool = False) -> int:
        """Unlink segments past their grace period (all of them at shutdown)."""
        now = time.monotonic()
        done = [n for n, deadline in self.pending.items() if everything or deadline <= now]
        for name in done:
            del self.pending[name]
            _unlink(name)
        return len(done)


def _unlink(name: str) -> None:
    """shm_unlink without touching the resource tracker (the segment was already unregistered)."""
    try:
        _posixshmem.shm_unlink("/" + name if not name.startswith("/") else name)
    except FileNotFoundError:
        pass


def encode(arr: np.ndarray, *, shm: OutputSegments | None = None, shm_threshold: int = 1 << 20) -> pb.Tensor:
    """Output array -> Tensor (into shared memory when asked for and large enough)."""
    code = CODES.get(arr.dtype.newbyteorder("<").str)
    if code is None:
        if arr.dtype.kind == "f":
            arr, code = arr.astype("<f8"), pb.DTYPE_FLOAT64
        elif arr.dtype.kind in "iub":
            arr, code = arr.astype("<i8"), pb.DTYPE_INT64
        else:
            raise TypeError(f"kernel returned an unsupported dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[code])
    if shm is not None and arr.nbytes >= shm_threshold:
        return pb.Tensor(dtype=code, shape=arr.shape, shm=shm.create(arr))  # type: ignore[arg-type]
    return pb.Tensor(dtype=code, shape=arr.shape, raw=arr.tobytes())  # type: ignore[arg-type]
