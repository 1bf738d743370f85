"""Merging the sidecars' fixed-bucket histograms across pods and reading quantiles from them.

Every sidecar uses the same bucket bounds, so a merge is an element-wise sum of counts — exact,
unlike averaging per-pod percentiles. Quantiles come from perfpilot_contract.histograms (the
estimator the sidecars use too): linear inside the bucket, as Prometheus' histogram_quantile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from perfpilot_contract import histograms as contract_histograms


@dataclass(frozen=True)
class Histogram:
    """Upper bounds (ascending; the last may be +inf) with non-cumulative counts per bucket."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0   # sum of observations

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.counts):
            raise ValueError(f"{len(self.bounds)} bounds but {len(self.counts)} counts")
        if any(b >= a for a, b in zip(self.bounds[1:], self.bounds[:-1])):
            raise ValueError("bounds must be strictly ascending")

    @property
    def count(self) -> int:
        return sum(self.counts)


def merge(histograms: Iterable[Histogram]) -> Histogram | None:
    """Sum histograms with identical bounds; None for an empty input."""
    merged: Histogram | None = None
    for h in histograms:
        if merged is None:
            merged = h
            continue
        if h.bounds != merged.bounds:
            raise ValueError("cannot merge histograms with different bucket bounds")
        merged = Histogram(merged.bounds,
                           tuple(a + b for a, b in zip(merged.counts, h.counts)),
                           merged.total + h.total)
    return merged


def quantile(h: Histogram, q: float) -> float:
    """The q-quantile (0 <= q <= 1): the contract's one estimator (Prometheus' rule); nan when empty."""
    return contract_histograms.quantile(h.bounds, h.counts, q)


def bucket_of(bounds: Sequence[float], value: float) -> int:
    """Index of the bucket a value falls in (upper bound inclusive, like Prometheus' `le`)."""
    lo, hi = 0, len(bounds) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if value <= bounds[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo
