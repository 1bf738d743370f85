"""Comparison helpers shared by the kernel tests (handle near-ties honestly)."""

from __future__ import annotations

import numpy as np

from perfpilot_agent.kernels import registry

COS_TOL = 2e-5  # float32 cosine scores, |score| <= 1, d <= 64 in tests


def assert_topk_matches(got: dict, inputs: dict, k: int, tol: float = COS_TOL) -> None:
    """Check a cosine_topk result against the NumPy oracle.

    * shapes/dtypes, indices unique per row and in range;
    * scores sorted descending and equal to the oracle's top-k scores within ``tol``;
    * each returned score equals the oracle's full score matrix at the returned index;
    * indices equal the oracle's wherever the oracle's score at that rank is separated from its
      neighbours (and from the first excluded score) by more than ``2*tol``: only genuine
      near-ties may be ordered differently.
    """
    ref = registry.reference_numpy("cosine_topk", inputs, {"k": k})
    full = registry.cosine_scores_numpy(inputs["query"], inputs["matrix"])
    idx, sc = got["indices"], got["scores"]
    b = inputs["query"].shape[0]
    n = inputs["matrix"].shape[0]
    assert idx.shape == (b, k) and idx.dtype == np.int64
    assert sc.shape == (b, k) and sc.dtype == np.float32
    for r in range(b):
        assert len(set(idx[r].tolist())) == k
        assert idx[r].min() >= 0 and idx[r].max() < n
        assert np.all(np.diff(sc[r]) <= 0), sc[r]
        np.testing.assert_allclose(sc[r], ref["scores"][r], atol=tol, rtol=0)
        np.testing.assert_allclose(sc[r], full[r, idx[r]], atol=tol, rtol=0)
        ordered = np.sort(full[r])[::-1]
        for p in range(k):
            s = ordered[p]
            lo = ordered[p + 1] if p + 1 < n else -np.inf
            hi = ordered[p - 1] if p > 0 else np.inf
            if hi - s > 2 * tol and s - lo > 2 * tol:
                assert idx[r, p] == ref["indices"][r, p], (r, p, idx[r], ref["indices"][r])


def assert_close(name: str, got: dict, inputs: dict, params: dict) -> None:
    ref = registry.reference_numpy(name, inputs, params)
    if name == "cosine_topk":
        assert_topk_matches(got, inputs, int(params["k"]))
        return
    assert set(got) == set(ref)
    for key in ref:
        assert got[key].shape == ref[key].shape
        assert got[key].dtype == ref[key].dtype, (key, got[key].dtype, ref[key].dtype)
        tol = 1e-4 if got[key].dtype == np.float32 else 1e-9
        np.testing.assert_allclose(got[key], ref[key], rtol=tol, atol=tol * max(1.0, float(np.abs(ref[key]).max())))
