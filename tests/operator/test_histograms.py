import math

import pytest
from hypothesis import given, strategies as st

from perfpilot_operator.logic.histograms import Histogram, bucket_of, merge, quantile

BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, math.inf)


def histogram_of(values: list[float]) -> Histogram:
    counts = [0] * len(BOUNDS)
    for v in values:
        counts[bucket_of(BOUNDS, v)] += 1
    return Histogram(BOUNDS, tuple(counts), sum(values))


@given(st.lists(st.floats(0, 2), max_size=50), st.lists(st.floats(0, 2), max_size=50))
def test_merge_equals_histogram_of_the_union(a: list[float], b: list[float]) -> None:
    merged = merge([histogram_of(a), histogram_of(b)])
    expected = histogram_of(a + b)
    assert merged is not None
    assert merged.counts == expected.counts
    assert merged.total == pytest.approx(expected.total)


@given(st.lists(st.floats(0, 0.99), min_size=1, max_size=200), st.sampled_from([0.5, 0.95, 0.99]))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    h = histogram_of(values)
    est = quantile(h, q)
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    i = bucket_of(BOUNDS, true)
    lower = BOUNDS[i - 1] if i else 0.0
    assert lower <= est <= BOUNDS[i]


def test_empty_and_mismatched() -> None:
    assert math.isnan(quantile(Histogram(BOUNDS, (0,) * len(BOUNDS)), 0.5))
    assert merge([]) is None
    with pytest.raises(ValueError, match="different bucket bounds"):
        merge([Histogram((1.0,), (1,)), Histogram((2.0,), (1,))])


def test_bucket_of_is_upper_inclusive() -> None:
    assert bucket_of(BOUNDS, 0.001) == 0
    assert bucket_of(BOUNDS, 0.0011) == 1
    assert bucket_of(BOUNDS, 5.0) == len(BOUNDS) - 1
