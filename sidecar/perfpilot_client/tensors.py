"""NumPy arrays <-> wire tensors for the client, with shared memory for large arrays.

Segments the client creates for inputs are kept for reuse by the next call (SegmentPool, unlinked
when the client closes); output segments created by the agent are copied into ordinary arrays and
unlinked here (the caller owns them).
"""

from __future__ import annotations

from collections.abc import Mapping
import os
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract import dtypes

DTYPES: dict[int, np.dtype[Any]] = {d.code: np.dtype(d.numpy) for d in dtypes.DTYPES}
CODES: dict[str, int] = {dt.str: code for code, dt in DTYPES.items()}


def _drop(seg: shared_memory.SharedMemory) -> None:
    seg.close()
    try:
        seg.unlink()
    except FileNotFoundError:
        pass


def new_segment(nbytes: int) -> shared_memory.SharedMemory:
    """A segment the sidecar can read although it runs as another uid (the injected sidecar is
    65532, the app anything): SharedMemory creates 0600. Readable by the pod only: /dev/shm is
    the pod's own tmpfs."""
    seg = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
    os.fchmod(seg._fd, 0o644)  # type: ignore[attr-defined]
    return seg


class SegmentPool:
    """Input segments kept between calls. A fresh segment pays a page fault for every 4 KiB page
    on first write (tens of ms for ~100 MB); a reused one is already mapped and resident. At most
    `max_bytes` are kept (oldest unlinked first); a segment serves arrays from half its size up,
    so a small array never pins a large segment. Thread-safe; close() unlinks everything."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._free: list[shared_memory.SharedMemory] = []
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> shared_memory.SharedMemory:
        with self._lock:
            fits = [s for s in self._free if nbytes <= s.size <= 2 * max(nbytes, 1)]
            if fits:
                seg = min(fits, key=lambda s: s.size)
                self._free.remove(seg)
                return seg
        return new_segment(nbytes)

    def release(self, segments: list[shared_memory.SharedMemory]) -> None:
        with self._lock:
            self._free.extend(segments)
            evict = []
            while self._free and sum(s.size for s in self._free) > self.max_bytes:
                evict.append(self._free.pop(0))
        for seg in evict:
            _drop(seg)

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for seg in free:
            _drop(seg)


class Segments:
    """Shared-memory segments used by one call; released with close() once the agent answered
    (back to the pool when there is one, else unlinked)."""

    def __init__(self, pool: SegmentPool | None = None) -> None:
        self.items: list[shared_memory.SharedMemory] = []
        self.pool = pool

    def new(self, nbytes: int) -> shared_memory.SharedMemory:
        seg = self.pool.acquire(nbytes) if self.pool is not None else new_segment(nbytes)
        self.items.append(seg)
        return seg

    def close(self) -> None:
        """Release everything (the agent has finished reading)."""
        items, self.items = self.items, []
        if self.pool is not None:
            self.pool.release(items)
        else:
            for seg in items:
                _drop(seg)


def encode(arr: Any, *, shm_threshold: int | None, segments: Segments) -> pb.Tensor:
    """Array -> Tensor; arrays of at least shm_threshold bytes go through shared memory."""
    a = np.asarray(arr)
    code = CODES.get(a.dtype.newbyteorder("<").str)  # big-endian input is converted below
    if code is None:
        raise TypeError(f"unsupported dtype {a.dtype}; use float32, float64, int32 or int64")
    a = np.ascontiguousarray(a, dtype=DTYPES[code])
    if shm_threshold is not None and a.nbytes >= shm_threshold:
        seg = segments.new(a.nbytes)
        view = np.ndarray(a.shape, dtype=a.dtype, buffer=seg.buf)
        view[...] = a
        del view
        return pb.Tensor(dtype=code, shape=a.shape, shm=pb.SharedMemoryRef(name=seg.name, offset=0))  # type: ignore[arg-type]
    return pb.Tensor(dtype=code, shape=a.shape, raw=a.tobytes())  # type: ignore[arg-type]


def decode(t: pb.Tensor) -> np.ndarray:
    """Tensor -> a fresh, writable array (shared-memory outputs are copied and unlinked)."""
    dtype = DTYPES[t.dtype]
    shape = tuple(t.shape)
    if t.WhichOneof("data") == "shm":
        seg = shared_memory.SharedMemory(name=t.shm.name, create=False)
        try:
            count = int(np.prod(shape, dtype=np.int64))
            out = np.frombuffer(seg.buf, dtype=dtype, count=count, offset=t.shm.offset).reshape(shape).copy()  # type: ignore[arg-type]
        finally:
            seg.close()
            try:
                seg.unlink()
            except FileNotFoundError:
                pass
            except PermissionError:
                # A sticky /dev/shm (the host's, not the pod's emptyDir) keeps another uid's
                # file: the sidecar unlinks its outputs after their grace period anyway.
                resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
        return out
    return np.frombuffer(t.raw, dtype=dtype).reshape(shape).copy()


def build_request(
    kernel: str,
    arrays: Mapping[str, Any],
    *,
    use_cache: bool,
    shm_threshold: int | None,
    segments: Segments,
) -> pb.RunKernelRequest:
    """Split keyword arguments into array inputs and scalar params."""
    req = pb.RunKernelRequest(kernel=kernel, use_cache=use_cache)
    if shm_threshold is not None:
        req.output_placement = pb.OUTPUT_PLACEMENT_SHARED_MEMORY
    for name, value in arrays.items():
        if isinstance(value, (bool, int, float, np.integer, np.floating)) and np.ndim(value) == 0:
            req.params[name] = float(value)
        else:
            req.inputs[name].CopyFrom(encode(value, shm_threshold=shm_threshold, segments=segments))
    return req


def decode_outputs(resp: pb.RunKernelResponse) -> dict[str, np.ndarray]:
    """All outputs as arrays."""
    return {name: decode(t) for name, t in resp.outputs.items()}
