"""NumPy arrays <-> wire tensors for the client, with shared memory for large arrays.

The only client module that needs NumPy; imported on the first run_kernel (see kernels_extra()).
Output segments created by the agent are copied into ordinary arrays and unlinked here (the caller
owns them).
"""

from __future__ import annotations

from collections.abc import Mapping
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract import dtypes
from perfpilot_client.shm import SegmentPool, Segments, drop

__all__ = ["SegmentPool", "Segments", "build_request", "decode", "decode_outputs", "encode"]

DTYPES: dict[int, np.dtype[Any]] = {d.code: np.dtype(d.numpy) for d in dtypes.DTYPES}
CODES: dict[str, int] = {dt.str: code for code, dt in DTYPES.items()}


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
            drop(seg)
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
