"""A pool's shared-memory staging: the parent's side of moving arrays to and from workers.

Separate from process supervision (supervision.py): this module decides how each input travels (a
``ShmRef`` to a shared array, a copy into a recycled segment, or pickled), allocates output
segments, copies results back, and frees everything a call used when it ends. Only the parent
creates or unlinks segments (see shm.py); the parent never maps its staging segments (pwrite in,
pread out), so another process truncating one fails a call instead of raising SIGBUS here.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import registry, shm


class Transport(enum.Enum):
    """How a call's inputs travel: AUTO by size; SHM or PICKLE forced (benchmarks)."""

    AUTO = "auto"
    SHM = "shm"
    PICKLE = "pickle"


@dataclass
class CallSegments:
    """Segments one call holds until it ends: recycled input copies and its output segments."""

    inputs: list[shm.Segment] = field(default_factory=list)
    outputs: dict[str, tuple[shm.Segment, tuple[int, ...], np.dtype[Any]]] = field(default_factory=dict)


class Staging:
    """Recycled input segments, output segments, shared arrays and the unlinked-names log of one pool."""

    def __init__(self, tag: str, *, threshold: int) -> None:
        self.tag = tag
        self.prefix = f"{shm.PREFIX}{os.getpid()}_{tag}"  # every segment of this pool starts with it
        self.threshold = int(threshold)
        # Recycled per-call input segments: fresh tmpfs pages cost a fault + zeroing each (~4 ms per
        # 10 MB); reusing already-faulted segments leaves just the copy. Bounded by bytes.
        self.spare: list[shm.Segment] = []
        self.spare_segment_bytes = 512 << 20
        self._spare_lock = threading.Lock()
        self.recycling = True  # False once the pool closes: released segments are freed
        self.unlinked: list[str] = []  # long-lived segments unlinked so far (workers drop mappings)
        self.shared = shm.SharedArrays(tag=tag + "sh", on_unlink=self.unlinked.append)

    def inputs(self, inputs: Mapping[str, np.ndarray], how: Transport, held: CallSegments) -> dict[str, Any]:
        """What to send for each input: a ShmRef (shared array or staged copy) or the array itself.

        Runs on the worker's dispatch thread (the copies are large)."""
        arrays: dict[str, Any] = {}
        for key, arr in inputs.items():
            ref = self.shared.ref_for(arr) if how is not Transport.PICKLE else None
            if ref is not None:
                arrays[key] = ref
            elif how is Transport.SHM or (how is Transport.AUTO and arr.nbytes > self.threshold):
                seg = self._take(arr.nbytes)
                held.inputs.append(seg)
                seg.write(np.ascontiguousarray(arr))  # pwrite: a truncated segment cannot SIGBUS us
                # keep=True: the segment is recycled for later calls, so the worker keeps its
                # mapping (populating the page tables of a 100 MB mapping costs ~10 ms per call);
                # recycle() tells the workers to drop it when the segment is freed.
                arrays[key] = shm.ShmRef(seg.name, arr.dtype.str, tuple(int(x) for x in arr.shape), 0, keep=True)
            else:
                arrays[key] = arr
        return arrays

    def outputs(self, kernel: str, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any],
                how: Transport, held: CallSegments) -> dict[str, shm.ShmRef]:
        """Segments for the outputs above the threshold (sizes follow from the inputs)."""
        outs: dict[str, shm.ShmRef] = {}
        if how is Transport.PICKLE:
            return outs
        for key, (shape, dtype) in registry.output_spec(kernel, inputs, params).items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes > self.threshold:
                seg = shm.Segment(nbytes, tag=self.tag, mapped=False)
                held.outputs[key] = (seg, shape, dtype)
                outs[key] = shm.ShmRef(seg.name, dtype.str, shape, 0)
        return outs

    @staticmethod
    def collect(result: dict[str, Any], held: CallSegments) -> dict[str, Any]:
        """Outputs the worker wrote to shared memory, copied out with pread (SegmentTruncated if cut short)."""
        for key, (seg, shape, dtype) in held.outputs.items():
            if key in result and result[key] is None:
                result[key] = seg.read(shape, dtype)
        return result

    def forget_since(self, seen: int) -> list[str]:
        """Names unlinked since a worker was last told (it had seen `seen` of them)."""
        return self.unlinked[seen:]

    def release(self, held: CallSegments) -> None:
        """The call ended (however it ended): recycle its input copies, free its output segments."""
        for seg in held.inputs:
            self._recycle(seg)
        held.inputs.clear()
        for seg, _shape, _dtype in held.outputs.values():
            seg.free()
        held.outputs.clear()

    def close(self) -> None:
        """Free every segment of this pool (spares, shared arrays, anything left over)."""
        with self._spare_lock:
            self.recycling = False
            spare, self.spare = self.spare, []
        for seg in spare:
            seg.free()
        self.shared.close()
        shm.sweep(self.prefix)

    def _take(self, nbytes: int) -> shm.Segment:
        """A segment of at least ``nbytes`` (at most 2x): a recycled one if possible. Any thread."""
        with self._spare_lock:
            for i, seg in enumerate(self.spare):
                if nbytes <= seg.size <= 2 * max(nbytes, 1 << 16):
                    return self.spare.pop(i)
        return shm.Segment(nbytes, tag=self.tag, mapped=False)

    def _recycle(self, seg: shm.Segment) -> None:
        with self._spare_lock:
            if self.recycling and seg.usable:
                self.spare.append(seg)
                total = sum(s.size for s in self.spare)
                while total > self.spare_segment_bytes and self.spare:
                    old = self.spare.pop(0)
                    total -= old.size
                    self.unlinked.append(old.name)  # workers unmap it with their next call
                    old.free()
                return
        self.unlinked.append(seg.name)
        seg.free()
