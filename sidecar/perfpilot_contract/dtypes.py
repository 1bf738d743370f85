"""Tensor element types on the wire: the DType enum <-> NumPy dtype strings (little-endian).

Strings, not NumPy objects, so importing this never imports NumPy (the client and the operator
stay light); the sidecar and the client's tensor helpers build `numpy.dtype(d.numpy)` from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfpilot.v1 import agent_pb2 as pb


@dataclass(frozen=True)
class DType:
    """One wire element type."""

    code: pb.DType.ValueType
    """The DType enum value."""
    name: str
    """Lower-case name as in messages and docs (float32)."""
    numpy: str
    """NumPy's dtype string, little-endian ("<f4")."""
    itemsize: int


DTYPES: tuple[DType, ...] = (
    DType(pb.DTYPE_FLOAT32, "float32", "<f4", 4),
    DType(pb.DTYPE_FLOAT64, "float64", "<f8", 8),
    DType(pb.DTYPE_INT32, "int32", "<i4", 4),
    DType(pb.DTYPE_INT64, "int64", "<i8", 8),
)
BY_CODE: dict[int, DType] = {d.code: d for d in DTYPES}
BY_NUMPY: dict[str, DType] = {d.numpy: d for d in DTYPES}
NAMES: str = ", ".join(pb.DType.Name(d.code).removeprefix("DTYPE_") for d in DTYPES)
"""For messages: "FLOAT32, FLOAT64, INT32, INT64"."""
