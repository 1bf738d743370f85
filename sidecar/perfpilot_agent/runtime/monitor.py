"""Performance monitor: the app's op timings, kernel latencies and heartbeat latency.

Validation is all-or-nothing per RecordTimings batch (a bad batch changes nothing), and the number
of distinct op names is capped so a buggy app cannot blow up memory or Prometheus label cardinality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument, ResourceExhausted
from perfpilot_agent.runtime.histogram import Histogram

OP_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
MAX_DURATION_SECONDS = 86400.0
MAX_OBSERVATIONS_PER_CALL = 100_000


@dataclass
class OpRecord:
    """Histogram and error count of one op (or one kernel)."""

    latency: Histogram = field(default_factory=Histogram)
    errors: int = 0
    cache_hits: int = 0


class Monitor:
    """Owns every latency histogram the agent reports in GetStats and /metrics."""

    def __init__(self, *, max_ops: int = 200) -> None:
        self.max_ops = max_ops
        self.ops: dict[str, OpRecord] = {}
        self.app_total = OpRecord()
        self.kernels: dict[str, OpRecord] = {}
        self.heartbeat = Histogram()

    def record_timings(self, request: pb.RecordTimingsRequest) -> int:
        """Validate and record a batch; returns the number of observations recorded."""
        total = 0
        new_ops: set[str] = set()
        for i, entry in enumerate(request.ops):
            path = f"ops[{i}]"
            if not OP_RE.fullmatch(entry.op):  # fullmatch: "$" would accept a trailing newline
                raise InvalidArgument(
                    f"{path}.op must be 1..128 characters from [A-Za-z0-9_.:/-], got {entry.op[:64]!r}"
                )
            n = len(entry.durations_seconds)
            if entry.errors > n:
                raise InvalidArgument(f"{path}.errors ({entry.errors}) exceeds the number of durations ({n})")
            total += n
            if total > MAX_OBSERVATIONS_PER_CALL:
                raise InvalidArgument(
                    f"too many observations in one call (> {MAX_OBSERVATIONS_PER_CALL}); send smaller batches"
                )
            for j, v in enumerate(entry.durations_seconds):
                if not 0.0 <= v <= MAX_DURATION_SECONDS:  # also rejects NaN
                    raise InvalidArgument(
                        f"{path}.durationsSeconds[{j}] must be finite and within [0, {MAX_DURATION_SECONDS:g}], got {v}"
                    )
            if entry.op not in self.ops:
                new_ops.add(entry.op)
        if len(self.ops) + len(new_ops) > self.max_ops:
            raise ResourceExhausted(
                f"too many distinct op names: {len(self.ops)} known + {len(new_ops)} new exceeds the limit "
                f"{self.max_ops} (--max-ops); use a bounded set of op names"
            )
        for entry in request.ops:
            rec = self.ops.get(entry.op)
            if rec is None:
                rec = self.ops[entry.op] = OpRecord()
            rec.latency.observe_many(entry.durations_seconds)
            rec.errors += entry.errors
            self.app_total.latency.observe_many(entry.durations_seconds)
            self.app_total.errors += entry.errors
        return total

    def record_kernel(self, kernel: str, seconds: float, *, error: bool, cache_hit: bool) -> None:
        """One kernel call (kernel names are bounded by the registry)."""
        rec = self.kernels.get(kernel)
        if rec is None:
            rec = self.kernels[kernel] = OpRecord()
        rec.latency.observe(max(seconds, 0.0))
        rec.errors += int(error)
        rec.cache_hits += int(cache_hit)


class RpcStats:
    """Per-method call counts by status code and handler latency (for /metrics)."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        """One finished call (method names are the service's, so labels stay bounded)."""
        key = (method, code)
        self.calls[key] = self.calls.get(key, 0) + 1
        h = self.latency.get(method)
        if h is None:
            h = self.latency[method] = Histogram()
        h.observe(seconds)
