"""validate_inputs, coercion and the NumPy reference (pure NumPy, no numba)."""

from __future__ import annotations

import numpy as np
import pytest

from perfpilot_agent.kernels import registry
from perfpilot_agent.kernels.errors import KernelInputError, UnknownKernel

f32, f64 = np.float32, np.float64
Q = np.ones((2, 4), f32)
M = np.ones((10, 4), f32)
V = np.ones((5, 3), f64)
W = np.ones(5, f64)


def _nan(a: np.ndarray, where=(0,)) -> np.ndarray:
    a = a.copy()
    a[where] = np.nan
    return a


def _inf(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[-1] = -np.inf
    return a


BAD = [
    # (kernel, inputs, params, error substring)
    ("cosine_topk", {"query": Q}, {"k": 1}, "matrix: missing input"),
    ("cosine_topk", {"query": Q, "matrix": M, "extra": M}, {"k": 1}, "extra: unexpected input"),
    ("cosine_topk", {"query": Q, "matrix": M}, {}, "k: missing parameter"),
    ("cosine_topk", {"query": Q, "matrix": M}, {"k": 1, "p": 2}, "p: unknown parameter"),
    ("cosine_topk", {"query": Q, "matrix": [[1.0]]}, {"k": 1}, "matrix: expected a numpy array, got list"),
    ("cosine_topk", {"query": Q, "matrix": np.ones(3, f32)}, {"k": 1}, "matrix: expected 2-D float32 array, got shape (3,)"),
    ("cosine_topk", {"query": Q, "matrix": np.ones((10, 4), np.int64)}, {"k": 1}, "matrix: expected 2-D float32 or float64 array, got dtype int64"),
    ("cosine_topk", {"query": Q.astype(np.float16), "matrix": M}, {"k": 1}, "query: expected 2-D float32 or float64 array, got dtype float16"),
    ("cosine_topk", {"query": Q, "matrix": np.ones((0, 4), f32)}, {"k": 1}, "matrix: is empty"),
    ("cosine_topk", {"query": np.ones((2, 5), f32), "matrix": M}, {"k": 1}, "query: has 5 columns but matrix has 4"),
    ("cosine_topk", {"query": Q, "matrix": M}, {"k": 0}, "k: must be in 1..10"),
    ("cosine_topk", {"query": Q, "matrix": M}, {"k": 11}, "k: must be in 1..10"),
    ("cosine_topk", {"query": Q, "matrix": M}, {"k": 2.5}, "k: expected an integer, got 2.5"),
    ("cosine_topk", {"query": Q, "matrix": M}, {"k": True}, "k: expected an integer"),
    ("cosine_topk", {"query": Q, "matrix": M}, {"k": float("nan")}, "k: expected an integer"),
    ("cosine_topk", {"query": _nan(Q), "matrix": M}, {"k": 1}, "query: contains NaN"),
    ("cosine_topk", {"query": Q, "matrix": _inf(M)}, {"k": 1}, "matrix: contains inf"),
    ("normalize_score", {"matrix": M, "query": Q}, {}, "query: expected 1-D float32 array, got shape (2, 4)"),
    ("normalize_score", {"matrix": M, "query": np.ones(3, f32)}, {}, "query: has 3 elements but matrix has 4 columns"),
    ("normalize_score", {"matrix": _nan(M), "query": np.ones(4, f32)}, {}, "matrix: contains NaN"),
    ("normalize_score", {"matrix": M, "query": np.ones(4, f32)}, {"k": 3}, "k: unknown parameter for normalize_score (takes no parameters)"),
    ("weighted_mean", {"values": V, "weights": np.ones(4)}, {}, "weights: has 4 entries but values has 5 rows"),
    ("weighted_mean", {"values": V, "weights": -W}, {}, "weights: contains negative values"),
    ("weighted_mean", {"values": V, "weights": np.zeros(5)}, {}, "weights: sum must be positive"),
    ("weighted_mean", {"values": V, "weights": W.astype(np.int32)}, {}, "weights: expected 1-D float32 or float64 array, got dtype int32"),
    ("weighted_mean", {"values": V, "weights": _nan(W)}, {}, "weights: contains NaN"),
    ("weighted_mean", {"values": np.ones((5, 3), np.complex64), "weights": W}, {}, "values: expected 2-D float32 or float64"),
    ("weighted_mean", {"values": np.ones((5, 0)), "weights": W}, {}, "values: is empty"),
]


@pytest.mark.parametrize(("kernel", "inputs", "params", "message"), BAD, ids=[b[3] for b in BAD])
def test_bad_inputs_are_rejected_with_a_message_naming_input_and_problem(kernel, inputs, params, message):
    with pytest.raises(KernelInputError) as exc:
        registry.validate_inputs(kernel, inputs, params)
    assert message in str(exc.value)


def test_unknown_kernel_lists_known_ones():
    with pytest.raises(UnknownKernel) as exc:
        registry.validate_inputs("foo", {}, {})
    assert str(exc.value) == "unknown kernel 'foo'; known: cosine_topk, normalize_score, weighted_mean"
    assert isinstance(exc.value, KernelInputError)


def test_value_checks_can_be_deferred():
    # the pool validates structure in the parent and values in the worker
    registry.validate_inputs("cosine_topk", {"query": _nan(Q), "matrix": M}, {"k": 1}, check_values=False)
    with pytest.raises(KernelInputError, match="query: contains NaN"):
        registry.check_input_values("cosine_topk", {"query": _nan(Q), "matrix": M}, {"k": 1})


def test_size_limit(monkeypatch):
    monkeypatch.setattr(registry, "MAX_ELEMENTS", 39)
    with pytest.raises(KernelInputError, match="matrix: 40 elements exceeds the limit of 39"):
        registry.validate_inputs("cosine_topk", {"query": Q, "matrix": M}, {"k": 1})


def test_valid_inputs_pass_including_float64_and_integral_float_k():
    registry.validate_inputs("cosine_topk", {"query": Q.astype(f64), "matrix": M}, {"k": 3.0})
    registry.validate_inputs("normalize_score", {"matrix": M.astype(f64), "query": np.ones(4, f32)}, {})
    registry.validate_inputs("weighted_mean", {"values": V.astype(f32), "weights": W}, {})


def test_coercion_dtypes_and_output_spec():
    x = registry.coerce_inputs("cosine_topk", {"query": Q.astype(f64), "matrix": M[:, ::-1]})
    assert x["query"].dtype == f32 and x["matrix"].flags.c_contiguous
    x = registry.coerce_inputs("normalize_score", {"matrix": M.astype(f64), "query": np.ones(4, f32)})
    assert x["query"].dtype == f64
    x = registry.coerce_inputs("weighted_mean", {"values": V.astype(f32), "weights": W.astype(f32)})
    assert x["values"].dtype == f32 and x["weights"].dtype == f64
    assert registry.output_spec("cosine_topk", {"query": Q, "matrix": M}, {"k": 3}) == {
        "indices": ((2, 3), np.dtype(np.int64)),
        "scores": ((2, 3), np.dtype(np.float32)),
    }
    assert registry.output_spec("weighted_mean", {"values": V, "weights": W}, {}) == {"mean": ((3,), np.dtype(f64))}
    assert registry.output_spec("normalize_score", {"matrix": M, "query": np.ones(4, f32)}, {}) == {
        "scores": ((10,), np.dtype(f32))
    }


def test_reference_topk_breaks_exact_ties_by_lower_index():
    matrix = np.array([[1, 0], [0, 1], [1, 0], [2, 0], [0, 1], [1, 1]], f32)
    out = registry.reference_numpy("cosine_topk", {"query": np.array([[1, 0], [0, 1]], f32), "matrix": matrix}, {"k": 4})
    # rows 0, 2, 3 score exactly 1 for the first query, then row 5 (0.707)
    assert out["indices"][0].tolist() == [0, 2, 3, 5]
    assert out["indices"][1].tolist() == [1, 4, 5, 0]
    assert out["scores"].dtype == np.float32


def test_reference_zero_norms_score_zero():
    matrix = np.array([[0, 0], [3, 4]], f32)
    out = registry.reference_numpy("normalize_score", {"matrix": matrix, "query": np.array([3, 4], f32)}, {})
    np.testing.assert_allclose(out["scores"], [0.0, 1.0], atol=1e-7)
    out = registry.reference_numpy("normalize_score", {"matrix": matrix, "query": np.zeros(2, f32)}, {})
    np.testing.assert_array_equal(out["scores"], [0.0, 0.0])
    out = registry.reference_numpy("cosine_topk", {"query": np.zeros((1, 2), f32), "matrix": matrix}, {"k": 2})
    assert out["indices"].tolist() == [[0, 1]] and out["scores"].tolist() == [[0.0, 0.0]]


def test_reference_weighted_mean():
    values = np.array([[1.0, 2.0], [3.0, 6.0]])
    out = registry.reference_numpy("weighted_mean", {"values": values, "weights": np.array([1.0, 3.0])}, {})
    np.testing.assert_allclose(out["mean"], [2.5, 5.0])
    assert out["mean"].dtype == np.float64


def test_every_kernel_has_a_spec():
    assert set(registry.KERNELS) == {"cosine_topk", "normalize_score", "weighted_mean"}
    for name, sp in registry.KERNELS.items():
        assert sp.name == name and sp.inputs and sp.doc
