"""The shared tier's counters and state as the snapshot sees them (no Redis import: a sidecar
without cache.shared never loads redis-py, ~7 MB of resident memory)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SharedCounters:
    """Cumulative counters (GetStats' SharedCacheStats and perfpilot_cache_shared_* metrics)."""

    hits: int = 0
    misses: int = 0
    skipped: int = 0
    errors: int = 0
    writes: int = 0
    writes_dropped: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0
    resyncs: int = 0


@dataclass(frozen=True)
class SharedView:
    """The tier as GetStats and /metrics see it at one moment."""

    configured: bool = False
    up: bool = False
    counters: SharedCounters = field(default_factory=SharedCounters)
    last_error: str = ""
    down_since_unix_nano: int = 0
    pending: int = 0
