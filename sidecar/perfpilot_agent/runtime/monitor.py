"""Performance monitor: the app's op timings, kernel latencies and heartbeat latency.

Validation is all-or-nothing per RecordTimings batch (a malformed batch changes nothing). The number
of distinct op names is capped so a buggy app cannot blow up memory or Prometheus label cardinality;
once the cap is reached, known ops are still recorded and new names are refused by name (returned to
the client and logged once each), so one stray name never costs the known ops their observations.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument
from perfpilot_agent.runtime.histogram import Histogram
from perfpilot_contract.limits import MAX_STALENESS_SAMPLES

OP_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
MAX_DURATION_SECONDS = 86400.0
MAX_OBSERVATIONS_PER_CALL = 100_000
# Refused op names remembered for log-once; beyond this many, further names are not logged.
MAX_REFUSED_NAMES_LOGGED = 1000
log = logging.getLogger(__name__)


@dataclass
class OpRecord:
    """Histogram and error count of one op (or one kernel)."""

    latency: Histogram = field(default_factory=Histogram)
    errors: int = 0
    cache_hits: int = 0


@dataclass
class L1Record:
    """The clients' L1 counters, summed over every client of this sidecar (RecordTimings.cache)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    events: int = 0
    resyncs: int = 0
    staleness: Histogram = field(default_factory=Histogram)

    def to_proto(self) -> pb.ClientCacheStats:
        """Cumulative, for GetStats."""
        return pb.ClientCacheStats(hits=self.hits, misses=self.misses, evictions=self.evictions,
                                   invalidations=self.invalidations, events=self.events, resyncs=self.resyncs,
                                   staleness=self.staleness.to_proto())


class Monitor:
    """Owns every latency histogram the agent reports in GetStats and /metrics."""

    def __init__(self, *, max_ops: int = 200) -> None:
        self.max_ops = max_ops
        self.ops: dict[str, OpRecord] = {}
        self.app_total = OpRecord()
        self.kernels: dict[str, OpRecord] = {}
        self.heartbeat = Histogram()
        self.refused_logged: set[str] = set()
        self.refused_observations = 0
        self.l1 = L1Record()

    def record_timings(self, request: pb.RecordTimingsRequest) -> pb.RecordTimingsResponse:
        """Validate and record a batch: malformed -> InvalidArgument and nothing recorded; past the
        op-name cap -> the known ops are recorded and the new names listed in `refused_ops`."""
        total = 0
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
        if request.HasField("cache"):
            _check_l1(request.cache)
        accepted = refused = 0
        refused_ops: list[str] = []
        for entry in request.ops:
            rec = self.ops.get(entry.op)
            if rec is None:
                if len(self.ops) >= self.max_ops:
                    if entry.op not in refused_ops:
                        refused_ops.append(entry.op)
                    refused += len(entry.durations_seconds)
                    continue
                rec = self.ops[entry.op] = OpRecord()
            rec.latency.observe_many(entry.durations_seconds)
            rec.errors += entry.errors
            self.app_total.latency.observe_many(entry.durations_seconds)
            self.app_total.errors += entry.errors
            accepted += len(entry.durations_seconds)
        if request.HasField("cache"):
            self._record_l1(request.cache)
        if refused_ops:
            self.refused_observations += refused
            self._log_refused(refused_ops)
        return pb.RecordTimingsResponse(accepted=accepted, refused_ops=refused_ops, refused=refused)

    def _record_l1(self, c: pb.ClientCacheStats) -> None:
        r = self.l1
        r.hits += c.hits
        r.misses += c.misses
        r.evictions += c.evictions
        r.invalidations += c.invalidations
        r.events += c.events
        r.resyncs += c.resyncs
        r.staleness.observe_many(c.staleness_seconds)

    def _log_refused(self, names: list[str]) -> None:
        """One warning per refused name (bounded: an app inventing names cannot flood the log)."""
        for name in names:
            if name in self.refused_logged or len(self.refused_logged) > MAX_REFUSED_NAMES_LOGGED:
                continue
            self.refused_logged.add(name)
            if len(self.refused_logged) > MAX_REFUSED_NAMES_LOGGED:
                log.warning("more op names refused; not logging further names")
                continue
            log.warning(
                "op name %r refused: %d distinct op names tracked, the limit (--max-ops); its observations are "
                "not recorded. Use a bounded set of op names (route templates, not raw paths).", name, self.max_ops,
            )

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


def _check_l1(c: pb.ClientCacheStats) -> None:
    """Bounds of a client's L1 report (all-or-nothing with the rest of the batch)."""
    n = len(c.staleness_seconds)
    if n > MAX_STALENESS_SAMPLES:
        raise InvalidArgument(f"cache.stalenessSeconds has {n} values; at most {MAX_STALENESS_SAMPLES} per call")
    for j, v in enumerate(c.staleness_seconds):
        if not 0.0 <= v <= MAX_DURATION_SECONDS:  # also rejects NaN
            raise InvalidArgument(
                f"cache.stalenessSeconds[{j}] must be finite and within [0, {MAX_DURATION_SECONDS:g}], got {v}")
    if c.HasField("staleness"):
        raise InvalidArgument("cache.staleness is reported by GetStats only; send cache.stalenessSeconds")
