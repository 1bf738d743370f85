"""Tensor wire format <-> NumPy: every size checked before any allocation, caller memory never mapped.

Inline tensors are raw little-endian bytes viewed in place (np.frombuffer over the request's own
bytes, no copy). Shared-memory inputs are the caller's segments, and the caller may truncate,
unlink or rewrite them at any time; a mapping of such a segment turns a truncation into SIGBUS in
the agent. So the agent never maps them: it opens the segment without following links and without
blocking (a FIFO must not stall the event loop), checks that it is a regular file large enough for
the declared shape, and copies it with pread into memory it owns. A segment that shrinks during
the copy fails that call with INVALID_ARGUMENT; from then on the call sees a private snapshot.
Outputs placed in shared memory are written with pwrite for the same reason, handed to the caller
(who unlinks them) and reaped after a grace period if the caller never did.
Imported lazily (first RunKernel), so a heartbeat-only agent never loads NumPy.
"""

from __future__ import annotations

import errno
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument, ResourceExhausted
from perfpilot_contract import dtypes

DTYPES: dict[int, np.dtype[Any]] = {d.code: np.dtype(d.numpy) for d in dtypes.DTYPES}
CODES: dict[str, int] = {dt.str: code for code, dt in DTYPES.items()}
MAX_DIMS = 8
SHM_DIR = "/dev/shm"
SHM_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
"""Segment names (no slash): fullmatch, so a trailing newline is refused too."""
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_OUTPUT_PREFIX = "ppo_"


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@dataclass
class _Input:
    """One input whose header passed the checks; `fd` is set for a shared-memory input."""

    name: str
    path: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int
    raw: bytes | None = None
    segment: str = ""
    offset: int = 0
    fd: int = -1
    array: np.ndarray | None = None


def check_header(path: str, t: pb.Tensor, *, max_bytes: int) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """dtype, shape and byte size of `t`, refusing anything that could not be allocated.

    Every dimension counts towards the limit even when another one is zero, so a shape like
    [0, 2**62, 2**62] (zero bytes, but beyond what NumPy can describe) is refused here.
    """
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
    shape = tuple(int(d) for d in t.shape)
    extent = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if extent > max_bytes:
        raise InvalidArgument(
            f"{path} is too large: shape {list(shape)} {dtype.name} spans {_fmt_bytes(extent)}, "
            f"limit is {_fmt_bytes(max_bytes)} (--max-tensor-bytes)"
        )
    return dtype, shape, math.prod(shape) * dtype.itemsize


def open_segment(path: str, ref: pb.SharedMemoryRef, need: int) -> int:
    """Open a caller's segment read-only: a regular file of at least `need` bytes, never blocking.

    O_NOFOLLOW refuses symbolic links, O_NONBLOCK makes opening a FIFO return at once (then fstat
    refuses it), and the name rule keeps the path inside /dev/shm.
    """
    name = ref.name
    if not SHM_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidArgument(f"{path}.shm.name is not a valid segment name "
                              f"(1..200 characters from [A-Za-z0-9_.-]): {name[:80]!r}")
    try:
        fd = os.open(os.path.join(SHM_DIR, name), _OPEN_FLAGS)
    except FileNotFoundError:
        raise InvalidArgument(f"{path}.shm: shared memory segment {name!r} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # our limit, not the caller's mistake
            raise ResourceExhausted(f"{path}.shm: the agent has too many open files; retry later") from None
        raise InvalidArgument(f"{path}.shm: cannot open segment {name!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path}.shm: {name!r} is not a shared memory segment (not a regular file)")
        if need > st.st_size:
            raise InvalidArgument(
                f"{path}.shm: offset {ref.offset} + {need - ref.offset} bytes exceeds the segment size {st.st_size}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_segment(fd: int, dest: memoryview, offset: int, *, path: str) -> None:
    """Copy len(dest) bytes at `offset` of `fd` into `dest` (pread: a shrunken file is a short read, not SIGBUS)."""
    done = 0
    while done < len(dest):
        n = os.preadv(fd, [dest[done:]], offset + done)
        if n <= 0:
            raise InvalidArgument(
                f"{path}.shm: the segment shrank while the agent was reading it "
                f"({offset + done} of {offset + len(dest)} bytes available); do not resize a segment during a call"
            )
        done += n


class Inputs:
    """The input tensors of one call: checked, opened, then copied into memory the agent owns.

    Construction checks every header and opens (and verifies) every segment, without allocating
    or reading. `read()` copies the shared-memory inputs (blocking: the caller decides whether to
    run it in a thread); `arrays()` returns the arrays. `close()` releases the segments' fds.
    """

    def __init__(self, tensors: Mapping[str, pb.Tensor], *, max_bytes: int) -> None:
        self.items: list[_Input] = []
        try:
            total = 0
            for name in sorted(tensors):
                t = tensors[name]
                path = f"inputs[{name[:64]!r}]"
                dtype, shape, nbytes = check_header(path, t, max_bytes=max_bytes)
                total += nbytes
                if total > max_bytes:
                    raise InvalidArgument(
                        f"inputs together exceed the limit of {_fmt_bytes(max_bytes)} (--max-tensor-bytes)"
                    )
                item = _Input(name, path, dtype, shape, nbytes)
                which = t.WhichOneof("data")
                if which == "raw":
                    if len(t.raw) != nbytes:
                        raise InvalidArgument(
                            f"{path} has {len(t.raw)} bytes of data but shape {list(shape)} {dtype.name} needs {nbytes}"
                        )
                    item.raw = t.raw
                elif which == "shm":
                    if t.shm.offset % dtype.itemsize:
                        raise InvalidArgument(
                            f"{path}.shm.offset {t.shm.offset} is not a multiple of the item size {dtype.itemsize}"
                        )
                    item.segment, item.offset = t.shm.name, int(t.shm.offset)
                    item.fd = open_segment(path, t.shm, item.offset + nbytes)
                else:
                    raise InvalidArgument(f"{path} has no data; set raw or shm")
                self.items.append(item)
        except BaseException:
            self.close()
            raise

    @property
    def shm_bytes(self) -> int:
        """Bytes that read() copies out of shared memory."""
        return sum(i.nbytes for i in self.items if i.fd >= 0)

    def read(self) -> None:
        """Copy every shared-memory input into a private array (any thread)."""
        for item in self.items:
            if item.fd < 0 or item.array is not None:
                continue
            arr = np.empty(item.shape, dtype=item.dtype)
            if item.nbytes:
                read_segment(item.fd, arr.data.cast("B"), item.offset, path=item.path)
            item.array = arr

    def arrays(self, *, finite_check_max_bytes: int = 1 << 20) -> dict[str, np.ndarray]:
        """The decoded arrays (after read()); NaN/inf refused here for float tensors up to the threshold.

        Larger ones are checked by the pool in a worker, so a 300 MB input never stalls the event loop.
        """
        out: dict[str, np.ndarray] = {}
        for item in self.items:
            if item.raw is not None:
                arr = np.frombuffer(item.raw, dtype=item.dtype).reshape(item.shape)
            else:
                assert item.array is not None, "read() must run before arrays()"
                arr = item.array
            if item.dtype.kind == "f" and 0 < item.nbytes <= finite_check_max_bytes and not np.isfinite(arr).all():
                raise InvalidArgument(f"{item.path} contains NaN or infinity")
            out[item.name] = arr
        return out

    def close(self) -> None:
        """Close the segments' fds (idempotent)."""
        for item in self.items:
            if item.fd >= 0:
                os.close(item.fd)
                item.fd = -1


def decode_params(params: Mapping[str, float]) -> dict[str, float]:
    """Scalar parameters must be finite."""
    out: dict[str, float] = {}
    for key, value in params.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"params[{key[:64]!r}] must be finite, got {value}")
        out[key] = value
    return out


class OutputSegments:
    """Shared-memory segments the agent created for outputs; reaped if the caller never unlinks.

    Written with pwrite rather than through a mapping: the caller can open (and truncate) the
    segment as soon as its name exists, and a truncated mapping would be SIGBUS in the agent.
    """

    def __init__(self, *, grace: float = 60.0) -> None:
        self.grace = grace
        self.pending: dict[str, float] = {}

    def create(self, arr: np.ndarray) -> pb.SharedMemoryRef:
        """Copy `arr` into a new segment the caller will own."""
        data = np.ascontiguousarray(arr).data.cast("B")
        name = f"{_OUTPUT_PREFIX}{os.getpid()}_{secrets.token_hex(8)}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            # The app container runs as another uid and opens the segment read-write, then unlinks
            # it: 0600 would refuse it. /dev/shm is the pod's own tmpfs, shared with the app only.
            os.fchmod(fd, 0o666)
            os.ftruncate(fd, max(len(data), 1))
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
        except BaseException:
            _unlink(name)
            raise
        finally:
            os.close(fd)
        self.pending[name] = time.monotonic() + self.grace
        return pb.SharedMemoryRef(name=name, offset=0)

    def reap(self, *, everything: bool = False) -> int:
        """Unlink segments past their grace period (all of them at shutdown)."""
        now = time.monotonic()
        done = [n for n, deadline in self.pending.items() if everything or deadline <= now]
        for name in done:
            del self.pending[name]
            _unlink(name)
        return len(done)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
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
