"""The kernel catalogue: names, input/parameter contracts, validation and the NumPy reference.

Pure NumPy; importing this module never imports numba (the parent process of a heartbeat-only
sidecar stays small). The NumPy implementations here are the tests' oracle and the benchmarks'
baseline, written the way an experienced NumPy user would write them (BLAS matmul, vectorised
norms, ``argpartition``-style selection), not deliberately slow.

Dtype policy (documented in docs/kernels.md):

* Inputs must be ``float32`` or ``float64`` NumPy arrays; anything else (ints, bools, object,
  float16, complex) is rejected with ``KernelInputError`` rather than silently converted.
* ``cosine_topk`` works in float32 (embeddings are float32; float64 inputs are cast down, a copy —
  send float32 to avoid it). Scores are float32, indices int64.
* ``weighted_mean`` keeps ``values`` as given, casts ``weights`` to float64 and accumulates in
  float64; ``mean`` is float64 (the dtype ``np.average`` returns for float64 weights).
* ``normalize_score`` works in the matrix's dtype; ``query`` is cast to it; ``scores`` has it.
* Non-contiguous inputs are accepted and copied to C order.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import numpy as np

from perfpilot_contract.limits import KERNEL_NAMES

from .errors import KernelInputError, UnknownKernel

#: Largest number of elements accepted in one input array (4 GiB of float32).
MAX_ELEMENTS = 1 << 30
#: Largest k accepted by cosine_topk (per query).
MAX_K = 10_000

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class KernelSpec:
    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    doc: str


KERNELS: dict[str, KernelSpec] = {
    "cosine_topk": KernelSpec(
        name="cosine_topk",
        inputs=("query", "matrix"),
        params=("k",),
        doc=(
            "Top-k rows of matrix[n,d] by cosine similarity to each row of query[b,d]. "
            "Returns indices int64[b,k] and scores float32[b,k], sorted by descending score, "
            "ties broken by lower index. Zero-norm rows or queries score 0."
        ),
    ),
    "normalize_score": KernelSpec(
        name="normalize_score",
        inputs=("matrix", "query"),
        params=(),
        doc=(
            "scores[n] = dot(matrix[i]/||matrix[i]||, query/||query||) for matrix[n,d], query[d]; "
            "zero rows (or a zero query) score 0. Works in the matrix's dtype."
        ),
    ),
    "weighted_mean": KernelSpec(
        name="weighted_mean",
        inputs=("values", "weights"),
        params=(),
        doc=(
            "mean[d] = sum_i weights[i]*values[i,:] / sum(weights) for values[n,d], weights[n] "
            "(non-negative, positive sum). Accumulates in float64; mean is float64."
        ),
    ),
}


if tuple(KERNELS) != KERNEL_NAMES:  # the contract's list is what the CRD enum and Configure accept
    raise ImportError(f"kernel registry {tuple(KERNELS)} differs from perfpilot_contract.limits.KERNEL_NAMES "
                      f"{KERNEL_NAMES}: add the name there (and to the CRD enum) in the same change")


def known() -> str:
    return ", ".join(KERNEL_NAMES)


def spec(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except (KeyError, TypeError):
        raise UnknownKernel(f"unknown kernel {name!r}; known: {known()}") from None


# ---------------------------------------------------------------------------------------------
# validation


def _array(name: str, x: Any, ndim: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise KernelInputError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise KernelInputError(
            f"{name}: expected {ndim}-D float32 or float64 array, got dtype {x.dtype}"
        )
    if x.ndim != ndim:
        raise KernelInputError(
            f"{name}: expected {ndim}-D {x.dtype} array, got shape {tuple(x.shape)}"
        )
    if x.size == 0:
        raise KernelInputError(f"{name}: is empty (shape {tuple(x.shape)})")
    if x.size > MAX_ELEMENTS:
        raise KernelInputError(
            f"{name}: {x.size} elements exceeds the limit of {MAX_ELEMENTS}"
        )
    return x


def _int_param(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise KernelInputError(f"{name}: expected an integer, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f != int(f):
        raise KernelInputError(f"{name}: expected an integer, got {v!r}")
    return int(f)


def _check_finite(name: str, x: np.ndarray) -> None:
    # min/max propagate NaN and expose inf without allocating an n-sized temporary.
    lo, hi = x.min(), x.max()
    if math.isnan(lo) or math.isnan(hi):
        raise KernelInputError(f"{name}: contains NaN")
    if math.isinf(lo) or math.isinf(hi):
        raise KernelInputError(f"{name}: contains inf")


def validate_inputs(
    name: str,
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, float | int],
    *,
    check_values: bool = True,
) -> None:
    """Raise ``KernelInputError`` (or ``UnknownKernel``) if the call is invalid.

    Structural checks (names, dtypes, ndim, shapes, emptiness, size limit, parameters) are O(1).
    ``check_values`` adds the O(n) checks (no NaN/inf, weights non-negative with positive sum);
    the pool runs those in the worker so a 300 MB input does not stall the parent's event loop.
    """
    sp = spec(name)
    if not isinstance(inputs, Mapping):
        raise KernelInputError(f"inputs: expected a mapping of name to array, got {type(inputs).__name__}")
    if not isinstance(params, Mapping):
        raise KernelInputError(f"params: expected a mapping of name to number, got {type(params).__name__}")
    for key in inputs:
        if key not in sp.inputs:
            raise KernelInputError(
                f"{key}: unexpected input for {name} (expects {', '.join(sp.inputs)})"
            )
    for key in sp.inputs:
        if key not in inputs:
            raise KernelInputError(f"{key}: missing input ({name} needs {', '.join(sp.inputs)})")
    for key in params:
        if key not in sp.params:
            takes = ", ".join(sp.params) if sp.params else "no parameters"
            raise KernelInputError(f"{key}: unknown parameter for {name} (takes {takes})")
    for key in sp.params:
        if key not in params:
            raise KernelInputError(f"{key}: missing parameter for {name}")

    if name == "cosine_topk":
        q = _array("query", inputs["query"], 2)
        m = _array("matrix", inputs["matrix"], 2)
        if q.shape[1] != m.shape[1]:
            raise KernelInputError(
                f"query: has {q.shape[1]} columns but matrix has {m.shape[1]} (dimensions must match)"
            )
        k = _int_param("k", params["k"])
        n = m.shape[0]
        if not 1 <= k <= min(n, MAX_K):
            raise KernelInputError(f"k: must be in 1..{min(n, MAX_K)} (matrix has {n} rows), got {k}")
    elif name == "normalize_score":
        m = _array("matrix", inputs["matrix"], 2)
        q = _array("query", inputs["query"], 1)
        if q.shape[0] != m.shape[1]:
            raise KernelInputError(
                f"query: has {q.shape[0]} elements but matrix has {m.shape[1]} columns (dimensions must match)"
            )
    elif name == "weighted_mean":
        v = _array("values", inputs["values"], 2)
        w = _array("weights", inputs["weights"], 1)
        if w.shape[0] != v.shape[0]:
            raise KernelInputError(
                f"weights: has {w.shape[0]} entries but values has {v.shape[0]} rows (must match)"
            )
    if check_values:
        check_input_values(name, inputs, params)


def check_input_values(name: str, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> None:
    """The O(n) part of validation (run after the structural part)."""
    for key in spec(name).inputs:
        _check_finite(key, inputs[key])
    if name == "weighted_mean":
        w = inputs["weights"]
        if w.min() < 0:
            raise KernelInputError("weights: contains negative values")
        total = float(np.sum(w, dtype=np.float64))
        if not total > 0:
            raise KernelInputError(f"weights: sum must be positive, got {total}")


# ---------------------------------------------------------------------------------------------
# working dtypes and output shapes


def coerce_inputs(name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs converted to the kernel's working dtypes, C-contiguous (no copy when already so)."""
    if name == "cosine_topk":
        return {
            "query": np.ascontiguousarray(inputs["query"], dtype=np.float32),
            "matrix": np.ascontiguousarray(inputs["matrix"], dtype=np.float32),
        }
    if name == "normalize_score":
        m = np.ascontiguousarray(inputs["matrix"])
        return {"matrix": m, "query": np.ascontiguousarray(inputs["query"], dtype=m.dtype)}
    if name == "weighted_mean":
        return {
            "values": np.ascontiguousarray(inputs["values"]),
            "weights": np.ascontiguousarray(inputs["weights"], dtype=np.float64),
        }
    spec(name)
    raise AssertionError(name)  # pragma: no cover


def output_spec(
    name: str, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any]
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of a call's outputs (after ``coerce_inputs``)."""
    if name == "cosine_topk":
        b = inputs["query"].shape[0]
        k = int(params["k"])
        return {"indices": ((b, k), np.dtype(np.int64)), "scores": ((b, k), np.dtype(np.float32))}
    if name == "normalize_score":
        m = inputs["matrix"]
        return {"scores": ((m.shape[0],), np.dtype(m.dtype))}
    if name == "weighted_mean":
        return {"mean": ((inputs["values"].shape[1],), np.dtype(np.float64))}
    spec(name)
    raise AssertionError(name)  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# NumPy reference (oracle and benchmark baseline)


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores[b,n]``: the k largest, sorted by descending score, ties -> lower index.

    ``np.partition`` finds the k-th largest value per row in O(n); every element >= it is a
    candidate (in index order), and a stable sort on -score picks the k best with lower indices
    winning ties, exactly.
    """
    b, n = scores.shape
    kth = np.partition(scores, n - k, axis=1)[:, n - k]
    idx = np.empty((b, k), dtype=np.int64)
    val = np.empty((b, k), dtype=scores.dtype)
    for r in range(b):
        cand = np.flatnonzero(scores[r] >= kth[r])
        order = np.argsort(-scores[r, cand], kind="stable")[:k]
        idx[r] = cand[order]
        val[r] = scores[r, idx[r]]
    return idx, val


def cosine_scores_numpy(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The full b×n cosine matrix in float32 (zero norms score 0)."""
    q = np.asarray(query, dtype=np.float32)
    m = np.asarray(matrix, dtype=np.float32)
    qn = np.linalg.norm(q, axis=1)
    mn = np.linalg.norm(m, axis=1)
    dots = q @ m.T
    denom = np.outer(qn, mn)
    scores: np.ndarray = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return scores


def reference_numpy(
    name: str, inputs: Mapping[str, np.ndarray], params: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """The same results as the JIT kernels, computed with plain NumPy."""
    x = coerce_inputs(name, inputs)
    if name == "cosine_topk":
        k = int(params["k"])
        scores = cosine_scores_numpy(x["query"], x["matrix"])
        idx, val = topk_rows(scores, k)
        return {"indices": idx, "scores": val.astype(np.float32, copy=False)}
    if name == "normalize_score":
        m, q = x["matrix"], x["query"]
        mn = np.linalg.norm(m, axis=1)
        qn = np.linalg.norm(q)
        dots = m @ q
        denom = mn * qn
        return {"scores": np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)}
    if name == "weighted_mean":
        mean = np.average(x["values"], axis=0, weights=x["weights"])
        return {"mean": np.asarray(mean, dtype=np.float64)}
    spec(name)
    raise AssertionError(name)  # pragma: no cover
