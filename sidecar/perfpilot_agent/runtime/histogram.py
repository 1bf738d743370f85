"""Fixed-bucket latency histograms that merge across pods by adding counts.

Every histogram in every agent has the same bounds: 1 µs × 2^(i/4) for i = 0..107 (1 µs .. ~113 s),
so the operator merges pods by adding counts bucket by bucket, and merging is exact (the merge of
two histograms equals the histogram of the union of their observations).

Quantiles use the contract's one estimator (perfpilot_contract.histograms, Prometheus'
histogram_quantile rule), the same the operator applies to merged histograms. Because adjacent
bounds differ by 2^(1/4), the estimate is within 2^(1/4) - 1 ≈ 18.9 % (relative) of the true
sample quantile for values in (1 µs, 113 s]; at most 1 µs it reports a value in [0, 1 µs], above
the last bound it reports the last bound.
Plain lists and bisect: no NumPy, so a heartbeat-only agent stays small.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract import histograms as contract_histograms

BASE_SECONDS = 1e-6
STEPS_PER_OCTAVE = 4
N_BOUNDS = 108
BOUNDS: tuple[float, ...] = tuple(BASE_SECONDS * 2 ** (i / STEPS_PER_OCTAVE) for i in range(N_BOUNDS))
"""Upper bounds (inclusive, like Prometheus `le`); bucket len(BOUNDS) is the +Inf overflow."""
WIRE_BOUNDS: tuple[float, ...] = (*BOUNDS, math.inf)
"""Bounds as sent in GetStats: one per count, +Inf last."""
RELATIVE_ERROR = 2 ** (1 / STEPS_PER_OCTAVE) - 1
"""Worst relative error of a quantile estimate inside the bucketed range."""
PROMETHEUS_BOUND_INDEXES: tuple[int, ...] = tuple(range(0, N_BOUNDS, STEPS_PER_OCTAVE))
"""Every 4th bound (powers of two × 1 µs) for /metrics: cumulative counts there are exact."""


class Histogram:
    """Counts per fixed bucket plus sum and count; single-threaded (event loop) use."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * (N_BOUNDS + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one observation (caller guarantees it is finite and >= 0)."""
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def observe_many(self, values: Iterable[float]) -> None:
        """Record a batch of observations."""
        counts = self.counts
        total = 0.0
        n = 0
        for v in values:
            counts[bisect_left(BOUNDS, v)] += 1
            total += v
            n += 1
        self.sum += total
        self.count += n

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts into this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum
        self.count += other.count

    def quantile(self, q: float) -> float:
        """Estimated q-quantile in seconds (0.0 when empty); see the module docstring for the bound."""
        return quantile_from_counts(self.counts, q)

    def to_proto(self) -> pb.Histogram:
        """Message with the bounds (+Inf last) and non-cumulative counts, one per bound."""
        return pb.Histogram(bounds=WIRE_BOUNDS, counts=self.counts, sum=self.sum, count=self.count)

    @classmethod
    def from_proto(cls, msg: pb.Histogram) -> Histogram:
        """Rebuild from a message produced by to_proto (bounds must match)."""
        if tuple(msg.bounds) != WIRE_BOUNDS or len(msg.counts) != len(WIRE_BOUNDS):
            raise ValueError("histogram bounds differ from this agent's fixed bounds")
        h = cls()
        h.counts = list(msg.counts)
        h.sum = msg.sum
        h.count = msg.count
        return h


def quantile_from_counts(counts: Sequence[int], q: float) -> float:
    """Estimated q-quantile from non-cumulative counts over WIRE_BOUNDS; 0.0 when empty (proto-friendly)."""
    value = contract_histograms.quantile(WIRE_BOUNDS, counts, q)
    return 0.0 if math.isnan(value) else value


def quantiles_proto(h: Histogram) -> pb.Quantiles:
    """p50/p95/p99 of a histogram as a message."""
    return pb.Quantiles(p50=h.quantile(0.5), p95=h.quantile(0.95), p99=h.quantile(0.99))
