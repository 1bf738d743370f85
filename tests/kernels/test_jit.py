"""Property tests: every numba kernel (serial and parallel) equals the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from perfpilot_agent.kernels import registry

from .helpers import assert_close, assert_topk_matches

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Shapes come from hypothesis; bulk values from a seeded generator in one of several styles
# (hypothesis drawing thousands of floats one by one exceeds its entropy budget).
STYLES = ("normal", "ties", "scaled", "zeros")


def make(style: str, seed: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    g = np.random.default_rng(seed)
    if style == "ties":  # small integers: many exactly equal scores
        a = g.integers(-2, 3, size=shape).astype(dtype)
    elif style == "scaled":  # rows of very different magnitude
        a = g.standard_normal(shape) * 10.0 ** g.integers(-3, 4, size=shape[:1] + (1,) * (len(shape) - 1))
    elif style == "zeros":  # some all-zero rows
        a = g.standard_normal(shape)
        if len(shape) == 2:
            a[g.random(shape[0]) < 0.3] = 0
    else:
        a = g.standard_normal(shape)
    return np.ascontiguousarray(a, dtype=dtype)


params_st = st.tuples(st.sampled_from(STYLES), st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))


@st.composite
def cosine_case(draw):
    d = draw(st.integers(1, 48))
    n = draw(st.integers(1, 2000))
    b = draw(st.integers(1, 6))
    k = draw(st.integers(1, min(n, 16)))
    style, seed, dtype = draw(params_st)
    matrix = make(style, seed, (n, d), dtype)
    query = make(style, seed + 1, (b, d), dtype)
    if draw(st.booleans()) and n > 2:  # duplicate rows: bitwise-equal scores, index order decides
        matrix[n // 2] = matrix[0]
        matrix[n - 1] = matrix[0]
    return {"query": query, "matrix": matrix}, {"k": k}


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@SETTINGS
@given(case=cosine_case())
def test_cosine_topk_equals_numpy(jit, parallel, case):
    inputs, params = case
    x = registry.coerce_inputs("cosine_topk", inputs)
    got = jit.run_kernel("cosine_topk", x, params, parallel=parallel)
    assert_topk_matches(got, inputs, params["k"])


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@SETTINGS
@given(data=st.data())
def test_normalize_score_equals_numpy(jit, parallel, data):
    n = data.draw(st.integers(1, 2000))
    d = data.draw(st.integers(1, 48))
    style, seed, dtype = data.draw(params_st)
    inputs = {"matrix": make(style, seed, (n, d), dtype), "query": make(style, seed + 1, (d,), dtype)}
    x = registry.coerce_inputs("normalize_score", inputs)
    assert_close("normalize_score", jit.run_kernel("normalize_score", x, {}, parallel=parallel), inputs, {})


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@SETTINGS
@given(data=st.data())
def test_weighted_mean_equals_numpy(jit, parallel, data):
    n = data.draw(st.integers(1, 2000))
    d = data.draw(st.integers(1, 48))
    style, seed, dtype = data.draw(params_st)
    values = make(style, seed, (n, d), dtype)
    weights = np.abs(make(style, seed + 1, (n,), np.float64))
    weights[data.draw(st.integers(0, n - 1))] += 1.0  # positive sum
    inputs = {"values": values, "weights": weights}
    x = registry.coerce_inputs("weighted_mean", inputs)
    assert_close("weighted_mean", jit.run_kernel("weighted_mean", x, {}, parallel=parallel), inputs, {})


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_cosine_exact_ties_lower_index_first_across_chunks(jit, parallel):
    # 1000 identical rows: every score is bitwise equal, so the answer must be 0..k-1,
    # even though the parallel variant splits the rows into chunks and merges the heaps.
    matrix = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (1000, 1))
    query = np.array([[3.0, 2.0, 1.0], [-1.0, 0.0, 0.0]], np.float32)
    got = jit.run_kernel("cosine_topk", {"query": query, "matrix": matrix}, {"k": 7}, parallel=parallel)
    assert got["indices"].tolist() == [list(range(7))] * 2
    ref = registry.reference_numpy("cosine_topk", {"query": query, "matrix": matrix}, {"k": 7})
    assert got["indices"].tolist() == ref["indices"].tolist()


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_zero_rows_and_queries_score_zero(jit, parallel):
    matrix = np.array([[0, 0], [3, 4], [0, 0], [-3, -4]], np.float32)
    got = jit.run_kernel("cosine_topk", {"query": np.array([[3, 4], [0, 0]], np.float32), "matrix": matrix}, {"k": 4}, parallel=parallel)
    assert got["indices"].tolist() == [[1, 0, 2, 3], [0, 1, 2, 3]]
    np.testing.assert_allclose(got["scores"], [[1, 0, 0, -1], [0, 0, 0, 0]], atol=1e-6)
    got = jit.run_kernel("normalize_score", {"matrix": matrix, "query": np.array([3, 4], np.float32)}, {}, parallel=parallel)
    np.testing.assert_allclose(got["scores"], [0, 1, 0, -1], atol=1e-6)


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=arrays(np.float32, st.integers(1, 5000), elements=st.floats(-10, 10, width=32)))
def test_probe_sum_equals_numpy(jit, parallel, x):
    assert jit.probe_sum(x, parallel=parallel) == pytest.approx(float(np.sum(x, dtype=np.float64)), abs=1e-2 + 1e-4 * x.size)


def test_larger_matrix_parallel_equals_serial_and_numpy(jit, rng):
    query = rng.standard_normal((8, 64)).astype(np.float32)
    matrix = rng.standard_normal((20000, 64)).astype(np.float32)
    a = jit.run_kernel("cosine_topk", {"query": query, "matrix": matrix}, {"k": 10}, parallel=False)
    b = jit.run_kernel("cosine_topk", {"query": query, "matrix": matrix}, {"k": 10}, parallel=True)
    assert_topk_matches(a, {"query": query, "matrix": matrix}, 10)
    assert_topk_matches(b, {"query": query, "matrix": matrix}, 10)


def test_unknown_kernel(jit):
    from perfpilot_agent.kernels.errors import UnknownKernel

    with pytest.raises(UnknownKernel, match="unknown kernel 'nope'"):
        jit.run_kernel("nope", {}, {})
    with pytest.raises(UnknownKernel):
        jit.warm(["nope"])
