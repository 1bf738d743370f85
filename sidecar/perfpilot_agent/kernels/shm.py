"""Moving NumPy arrays between processes through POSIX shared memory (``/dev/shm``).

Ownership rule, which is what makes leaks impossible by construction: **only the parent process
(the pool) ever creates or unlinks a segment.** Workers only *attach* (``shm_open`` + ``mmap``) to a
name they were given and unmap it when the call ends. Consequences:

* A dying worker cannot leak a segment: it never owned one. The parent frees the segments of a
  call when the call ends, whichever way it ends (result, error, worker death, cancellation).
* Results above the threshold come back through a segment the *parent* allocated before the call
  (output sizes are known from the input shapes, see ``registry.output_spec``); the worker writes
  into it, the parent copies the result out with pread and unlinks the name at once.
* The pool's staging segments are never mapped by the parent (``Segment(mapped=False)``): it
  writes and reads them with pwrite/pread, so a segment truncated by another process fails one
  call instead of raising SIGBUS in the sidecar. Workers map them; a worker killed by SIGBUS is
  replaced by the pool.
* Parent-created segments are registered with multiprocessing's resource tracker, so even a
  SIGKILLed parent leaves nothing behind in ``/dev/shm`` (the tracker unlinks on its EOF).

Why not ``multiprocessing.shared_memory.SharedMemory`` directly: on Python 3.11 *attaching* also
registers the name with the resource tracker (``track=False`` only exists from 3.13), and since
spawned workers share the parent's tracker, a worker that "unregisters after attach" would remove
the parent's registration. Attaching with ``_posixshmem.shm_open`` + ``mmap`` side-steps the tracker
entirely and lets the worker map inputs read-only (``PROT_READ``), so a kernel bug cannot scribble on
the caller's data.
"""

from __future__ import annotations

import mmap
import os
import secrets
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # POSIX only; the sidecar runs on Linux
    import _posixshmem  # type: ignore[import-not-found]  # CPython internal, no stubs
except ImportError:  # pragma: no cover
    _posixshmem = None

from multiprocessing import resource_tracker

_SHM_DIR = "/dev/shm"
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
PREFIX = "pp_"


class SegmentTruncated(ValueError):
    """A segment is smaller than the array it should hold: another process truncated it."""


@dataclass(frozen=True)
class ShmRef:
    """Picklable description of an array living in a shared-memory segment."""

    name: str  # segment name without the leading slash, as listed in /dev/shm
    dtype: str  # numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...]
    offset: int = 0  # byte offset of the array's first element inside the segment
    keep: bool = False  # long-lived segment (pool.shared_array): workers may cache the mapping

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def new_name(tag: str = "") -> str:
    """A fresh segment name: ``pp_<pid>_<tag>_<random>`` (the pid makes sweeping by owner easy)."""
    return f"{PREFIX}{os.getpid()}_{tag}{secrets.token_hex(6)}"


class Segment:
    """A shared-memory segment created (and later unlinked) by this process.

    ``unlink()`` removes the name (idempotent). ``close()`` unmaps it when no array view is alive;
    if views are still exported the mapping is simply left to the garbage collector.

    ``mapped=False`` keeps the file descriptor instead of a mapping: the pool stages inputs and
    collects outputs through it with ``write``/``read`` (pwrite/pread). Another process of the same
    user can truncate any segment it can name; through a mapping that is SIGBUS in this process,
    through the descriptor it is a short read, an error for that call only.
    """

    def __init__(self, size: int, *, tag: str = "", track: bool = True, mapped: bool = True) -> None:
        if _posixshmem is None:  # pragma: no cover
            raise OSError("POSIX shared memory is not available on this platform")
        size = max(1, int(size))
        self.name = new_name(tag)
        self._path = "/" + self.name
        fd = _posixshmem.shm_open(self._path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        self._tracked = False
        self.fd = -1
        self.mmap: mmap.mmap | None = None
        try:
            if track:
                resource_tracker.register(self._path, "shared_memory")
                self._tracked = True
            os.ftruncate(fd, size)
            if mapped:
                self.mmap = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            self.unlink()
            raise
        if mapped:
            os.close(fd)
        else:
            self.fd = fd
        self.size = size
        self.linked = True

    def ndarray(self, shape: tuple[int, ...], dtype: np.dtype[Any] | str, offset: int = 0) -> np.ndarray:
        """A writable view of the segment (keeps the mapping alive as long as it lives)."""
        assert self.mmap is not None
        return np.ndarray(shape, dtype=np.dtype(dtype), buffer=self.mmap, offset=offset)

    @property
    def usable(self) -> bool:
        """Still open (mapped or holding its descriptor)."""
        return self.mmap is not None or self.fd >= 0

    def write(self, arr: np.ndarray) -> None:
        """Copy a C-contiguous array to the start of the segment (``mapped=False`` segments)."""
        data = arr.data.cast("B")
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], done)

    def read(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A private copy of the array at the start of the segment; SegmentTruncated when it was truncated."""
        out = np.empty(shape, dtype=dtype)
        data = out.data.cast("B")
        done = 0
        while done < len(data):
            n = os.preadv(self.fd, [data[done:]], done)
            if n <= 0:
                raise SegmentTruncated(f"shared memory segment {self.name!r} was truncated by another process "
                                 f"({done} of {len(data)} bytes left)")
            done += n
        return out

    def unlink(self) -> None:
        if getattr(self, "linked", True) is False:
            return
        self.linked = False
        try:
            _posixshmem.shm_unlink(self._path)
        except FileNotFoundError:
            pass
        if self._tracked:
            self._tracked = False
            try:
                resource_tracker.unregister(self._path, "shared_memory")
            except Exception:  # pragma: no cover - tracker gone at interpreter exit
                pass

    def close(self) -> None:
        """Drop our reference to the mapping (and close the descriptor).

        Never ``mmap.close()``: NumPy views do not hold a buffer export, only a reference to the
        mmap object, so an explicit close would unmap memory under a live array (segfault).
        Dropping the reference unmaps as soon as the last view is gone.
        """
        self.mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def free(self) -> None:
        self.unlink()
        self.close()

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, size={self.size})"


class Attachment:
    """A mapping of somebody else's segment in this process; ``close()`` unmaps it."""

    def __init__(self, ref: ShmRef, *, writable: bool = False, populate: bool = True) -> None:
        if _posixshmem is None:  # pragma: no cover
            raise OSError("POSIX shared memory is not available on this platform")
        self.ref = ref
        flags = os.O_RDWR if writable else os.O_RDONLY
        fd = _posixshmem.shm_open("/" + ref.name, flags, mode=0o600)
        try:
            size = os.fstat(fd).st_size
            need = ref.offset + ref.nbytes
            if need > size:
                raise SegmentTruncated(f"shared memory segment {ref.name!r} holds {size} bytes, need {need}")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mflags = mmap.MAP_SHARED | (_POPULATE if populate else 0)
            self._mmap: mmap.mmap | None = mmap.mmap(fd, size, flags=mflags, prot=prot)
        finally:
            os.close(fd)
        arr = np.ndarray(ref.shape, dtype=np.dtype(ref.dtype), buffer=self._mmap, offset=ref.offset)
        if not writable:
            arr.flags.writeable = False
        self.array: np.ndarray | None = arr

    def close(self) -> None:
        """Drop our view; the mapping goes when no other view of it is alive."""
        self.array = None
        self._mmap = None  # see Segment.close: unmapped when the last view is gone


class SharedArrays:
    """Arrays allocated directly in shared memory, so passing them to a pool call copies nothing.

    ``new(shape, dtype)`` returns an ordinary writable ndarray; fill it and pass it (or a C-contiguous
    slice of it) as a kernel input: the pool sends only its ``ShmRef``. The segment's name is unlinked
    when the array (and every view of it) is garbage-collected, or by ``free()``/``close()``.
    """

    def __init__(self, tag: str = "sh", on_unlink: Callable[[str], None] | None = None) -> None:
        self._tag = tag
        self._on_unlink = on_unlink
        self._by_mmap: dict[int, tuple[Segment, int]] = {}  # id(mmap) -> (segment, base address)

    def new(self, shape: tuple[int, ...] | int, dtype: np.dtype | type[np.generic] | str = np.float32) -> np.ndarray:
        shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape_t, dtype=np.int64)) * dt.itemsize
        seg = Segment(nbytes, tag=self._tag)
        arr = seg.ndarray(shape_t, dt)
        m = seg.mmap
        assert m is not None
        base = np.frombuffer(m, dtype=np.uint8).ctypes.data
        key = id(m)
        self._by_mmap[key] = (seg, base)
        # When the last view dies the mmap is collected: unlink the name then.
        weakref.finalize(m, self._forget, key, seg)
        seg.mmap = None  # the views own the mapping from now on
        return arr

    def _forget(self, key: int, seg: Segment) -> None:
        self._by_mmap.pop(key, None)
        self._unlink(seg)

    def _unlink(self, seg: Segment) -> None:
        if seg.linked:
            seg.unlink()
            if self._on_unlink is not None:
                self._on_unlink(seg.name)

    def ref_for(self, arr: np.ndarray) -> ShmRef | None:
        """The ShmRef of ``arr`` if it is a C-contiguous view of one of our shared arrays."""
        base = arr.base
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if base is None or not arr.flags.c_contiguous:
            return None
        entry = self._by_mmap.get(id(base))
        if entry is None:
            return None
        seg, addr = entry
        if not seg.linked:
            return None
        offset = arr.ctypes.data - addr
        return ShmRef(seg.name, arr.dtype.str, tuple(int(s) for s in arr.shape), int(offset), keep=True)

    def free(self, arr: np.ndarray) -> None:
        """Unlink the segment behind ``arr`` now (existing mappings stay valid until dropped)."""
        ref = self.ref_for(arr)
        if ref is None:
            return
        for key, (seg, _addr) in list(self._by_mmap.items()):
            if seg.name == ref.name:
                self._by_mmap.pop(key, None)
                self._unlink(seg)

    def close(self) -> None:
        for seg, _addr in list(self._by_mmap.values()):
            self._unlink(seg)
        self._by_mmap.clear()

    def __len__(self) -> int:
        return len(self._by_mmap)


class MappingCache:
    """Worker side: read-only mappings of long-lived (``keep``) segments, reused across calls.

    Mapping and page-table population cost ~0.2 ms per MB; an embedding matrix shared once and
    queried many times pays it once per worker. The parent tells the worker which names it has
    unlinked (``forget``) so their memory is released; at most ``capacity`` mappings are kept.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._maps: dict[str, mmap.mmap] = {}

    def view(self, ref: ShmRef) -> np.ndarray:
        m = self._maps.pop(ref.name, None)
        if m is None or ref.offset + ref.nbytes > len(m):
            fd = _posixshmem.shm_open("/" + ref.name, os.O_RDONLY, mode=0o600)
            try:
                size = os.fstat(fd).st_size
                if ref.offset + ref.nbytes > size:
                    raise SegmentTruncated(f"shared memory segment {ref.name!r} holds {size} bytes, need {ref.offset + ref.nbytes}")
                m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        self._maps[ref.name] = m  # most recently used last
        while len(self._maps) > self.capacity:
            self._maps.pop(next(iter(self._maps)))
        arr = np.ndarray(ref.shape, dtype=np.dtype(ref.dtype), buffer=m, offset=ref.offset)
        arr.flags.writeable = False
        return arr

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._maps.pop(name, None)

    def __len__(self) -> int:
        return len(self._maps)


def list_segments(prefix: str = PREFIX) -> list[str]:
    """Names in /dev/shm starting with ``prefix`` (Linux)."""
    try:
        return sorted(n for n in os.listdir(_SHM_DIR) if n.startswith(prefix))
    except OSError:  # pragma: no cover
        return []


def sweep(prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix``; returns how many. Last-resort clean-up."""
    n = 0
    for name in list_segments(prefix):
        try:
            _posixshmem.shm_unlink("/" + name)
            n += 1
        except FileNotFoundError:
            pass
    return n
