"""The one quantile estimator over fixed-bucket histograms (sidecar GetStats and operator alike).

Prometheus' histogram_quantile rule, so the numbers agree with what users see in PromQL: the
bucket holding rank q × count is found on cumulative counts and the value is interpolated
linearly inside it (the first bucket's lower edge is 0); a rank in the +Inf bucket reports the
highest finite bound. The estimate always lies in the bucket that holds the true sample
quantile, so with the sidecar's bounds (ratio 2^(1/4)) it is within 2^(1/4) - 1 ≈ 18.9 %
(relative) inside [1 µs, ~113 s]. Plain floats, no NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of non-cumulative `counts` over upper `bounds`; nan when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q}")
    if len(bounds) != len(counts):
        raise ValueError(f"{len(bounds)} bounds but {len(counts)} counts")
    n = sum(counts)
    if n == 0:
        return math.nan
    rank = q * n
    cumulative = 0
    lower = 0.0
    for bound, c in zip(bounds, counts, strict=True):
        if c and cumulative + c >= rank:
            if math.isinf(bound):
                return lower
            # min(): rounding must not carry the estimate past the bucket's upper bound.
            return min(bound, lower + (bound - lower) * (rank - cumulative) / c)
        cumulative += c
        if not math.isinf(bound):
            lower = bound
    return lower
