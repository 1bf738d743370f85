"""The live config (PerfProfile pools/cache/heartbeat/kernels): defaults, validation, conversions.

Every check raises InvalidArgument naming the field with the CRD's spelling
("pools.processWorkers must be between 0 and 64, got -3"), so the operator can surface the
message unchanged. Conversions go both ways: proto <-> LiveConfig <-> CRD-shaped dict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import duration_pb2

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument

MAX_TTL_SECONDS = 30 * 86400
"""Longest cache TTL accepted (30 days); larger values are almost certainly unit mistakes."""

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class Pools:
    """spec.pools: kernel workers, admission limit and the client's timing batch policy."""

    process_workers: int = 2
    thread_workers: int = 8
    max_queue: int = 1000
    batch_size: int = 100
    batch_wait: float = 0.01


@dataclass(frozen=True)
class Cache:
    """spec.cache: default TTL (seconds) and capacity."""

    ttl: float = 300.0
    max_entries: int = 10000


@dataclass(frozen=True)
class Heartbeat:
    """spec.heartbeat: expected interval and the slow threshold (seconds)."""

    interval: float = 5.0
    timeout: float = 0.2


@dataclass(frozen=True)
class Kernels:
    """spec.kernels: kernels compiled before readiness, and numba parallel mode."""

    warm: tuple[str, ...] = ()
    parallel: bool = True


@dataclass(frozen=True)
class LiveConfig:
    """The whole live config; immutable, replaced as a unit on Configure."""

    pools: Pools = field(default_factory=Pools)
    cache: Cache = field(default_factory=Cache)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    kernels: Kernels = field(default_factory=Kernels)


KnownKernels = Callable[[], "frozenset[str] | None"]
"""Returns the kernel names this agent can run, or None when the kernels package is absent."""


def _int_range(path: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InvalidArgument(f"{path} must be between {lo} and {hi}, got {value}")
    return int(value)


def _seconds(path: str, d: duration_pb2.Duration, *, lo: float, hi: float, lo_open: bool) -> float:
    """Validate a Duration: well-formed, and within (lo, hi] or [lo, hi]."""
    if not -999_999_999 <= d.nanos <= 999_999_999:
        raise InvalidArgument(f"{path}.nanos must be within [-999999999, 999999999], got {d.nanos}")
    if (d.seconds > 0 and d.nanos < 0) or (d.seconds < 0 and d.nanos > 0):
        raise InvalidArgument(f"{path} has seconds and nanos of different signs ({d.seconds}s, {d.nanos}ns)")
    value = d.seconds + d.nanos / 1e9
    too_low = value <= lo if lo_open else value < lo
    if too_low:
        op = ">" if lo_open else ">="
        raise InvalidArgument(f"{path} must be {op} {format_duration(lo)}, got {format_duration(value)}")
    if value > hi:
        raise InvalidArgument(f"{path} must be at most {format_duration(hi)}, got {format_duration(value)}")
    return value


def _warm(path: str, names: list[str], known: KnownKernels) -> tuple[str, ...]:
    if len(names) > 64:
        raise InvalidArgument(f"{path} may list at most 64 kernels, got {len(names)}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not _NAME_RE.fullmatch(name):
            raise InvalidArgument(f"{path}[{i}] is not a valid kernel name: {name[:80]!r}")
        if name in seen:
            raise InvalidArgument(f"{path}[{i}] repeats kernel {name!r}")
        seen.add(name)
    if names:
        available = known()
        if available is None:
            raise InvalidArgument(f"{path} lists kernels but this agent has no kernels installed")
        for i, name in enumerate(names):
            if name not in available:
                raise InvalidArgument(f"{path}[{i}] unknown kernel {name!r}; known: {', '.join(sorted(available))}")
    return tuple(names)


def merge_proto(current: LiveConfig, msg: pb.AgentConfig, known: KnownKernels) -> LiveConfig:
    """Validate `msg` and return `current` with the sections present in `msg` replaced."""
    cfg = current
    if msg.HasField("pools"):
        p = msg.pools
        batch_wait = 0.0
        if p.HasField("batch_wait"):
            batch_wait = _seconds("pools.batchWait", p.batch_wait, lo=0.0, hi=60.0, lo_open=False)
        cfg = replace(cfg, pools=Pools(
            # 0: no process pool at all (heartbeat-only; numba is never imported).
            process_workers=_int_range("pools.processWorkers", p.process_workers, 0, 64),
            thread_workers=_int_range("pools.threadWorkers", p.thread_workers, 1, 256),
            max_queue=_int_range("pools.maxQueue", p.max_queue, 1, 1_000_000),
            batch_size=_int_range("pools.batchSize", p.batch_size, 1, 100_000),
            batch_wait=batch_wait,
        ))
    if msg.HasField("cache"):
        c = msg.cache
        if not c.HasField("ttl"):
            raise InvalidArgument("cache.ttl is required when cache is set")
        cfg = replace(cfg, cache=Cache(
            ttl=_seconds("cache.ttl", c.ttl, lo=0.0, hi=MAX_TTL_SECONDS, lo_open=True),
            max_entries=_int_range("cache.maxEntries", c.max_entries, 1, 10_000_000),
        ))
    if msg.HasField("heartbeat"):
        h = msg.heartbeat
        for name in ("interval", "timeout"):
            if not h.HasField(name):
                raise InvalidArgument(f"heartbeat.{name} is required when heartbeat is set")
        interval = _seconds("heartbeat.interval", h.interval, lo=0.0, hi=3600.0, lo_open=True)
        timeout = _seconds("heartbeat.timeout", h.timeout, lo=0.0, hi=interval, lo_open=True)
        cfg = replace(cfg, heartbeat=Heartbeat(interval=interval, timeout=timeout))
    if msg.HasField("kernels"):
        k = msg.kernels
        cfg = replace(cfg, kernels=Kernels(warm=_warm("kernels.warm", list(k.warm), known), parallel=k.parallel))
    return cfg


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    whole = math.floor(seconds)
    d.seconds = int(whole)
    d.nanos = int(round((seconds - whole) * 1e9))
    if d.nanos >= 1_000_000_000:
        d.seconds += 1
        d.nanos -= 1_000_000_000
    return d


def to_proto(cfg: LiveConfig) -> pb.AgentConfig:
    """The full config as a message (every section set)."""
    return pb.AgentConfig(
        pools=pb.PoolsConfig(
            process_workers=cfg.pools.process_workers,
            thread_workers=cfg.pools.thread_workers,
            max_queue=cfg.pools.max_queue,
            batch_size=cfg.pools.batch_size,
            batch_wait=_duration(cfg.pools.batch_wait),
        ),
        cache=pb.CacheConfig(ttl=_duration(cfg.cache.ttl), max_entries=cfg.cache.max_entries),
        heartbeat=pb.HeartbeatConfig(
            interval=_duration(cfg.heartbeat.interval), timeout=_duration(cfg.heartbeat.timeout)
        ),
        kernels=pb.KernelsConfig(warm=list(cfg.kernels.warm), parallel=cfg.kernels.parallel),
    )


# -- Go-style durations and CRD-shaped dicts (for --config / PERFPILOT_CONFIG) -----------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("300ms", "1h30m", "0") into seconds."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if s.startswith("-") else 1.0
    if s[:1] in ("+", "-"):
        s = s[1:]
    pos, total = 0, 0.0
    for m in _PART_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"invalid duration {text!r} (expected Go syntax such as 300ms, 5m, 1h30m)")
    return sign * total


def format_duration(seconds: float) -> str:
    """Short human form for messages: 0.25s, 5m0s style is not needed here."""
    if seconds != seconds or math.isinf(seconds):
        return str(seconds)
    if abs(seconds) >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1e3:g}ms"


def _to_duration_msg(path: str, value: Any) -> duration_pb2.Duration:
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise InvalidArgument(f"{path}: {exc}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidArgument(f"{path} must be a duration string, got {type(value).__name__}")
    if not math.isfinite(seconds) or abs(seconds) > 315_576_000_000:
        raise InvalidArgument(f"{path} is out of range: {value!r}")
    d = duration_pb2.Duration()
    d.seconds = int(seconds)
    d.nanos = int(round((seconds - int(seconds)) * 1e9))
    return d


def _int(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{path} must be an integer, got {value!r}")
    if not -(2**31) <= value < 2**31:
        raise InvalidArgument(f"{path} is out of range: {value}")
    return value


def proto_from_dict(data: Mapping[str, Any]) -> pb.AgentConfig:
    """Build an AgentConfig from a CRD-shaped dict ({"pools": {"processWorkers": 2}, ...})."""
    msg = pb.AgentConfig()
    unknown = set(data) - {"pools", "cache", "heartbeat", "kernels"}
    if unknown:
        raise InvalidArgument(f"unknown config section(s): {', '.join(sorted(unknown))}")
    defaults = LiveConfig()
    if "pools" in data:
        p = {"processWorkers": defaults.pools.process_workers, "threadWorkers": defaults.pools.thread_workers,
             "maxQueue": defaults.pools.max_queue, "batchSize": defaults.pools.batch_size, "batchWait": "10ms",
             **data["pools"]}
        msg.pools.process_workers = _int("pools.processWorkers", p.pop("processWorkers"))
        msg.pools.thread_workers = _int("pools.threadWorkers", p.pop("threadWorkers"))
        msg.pools.max_queue = _int("pools.maxQueue", p.pop("maxQueue"))
        msg.pools.batch_size = _int("pools.batchSize", p.pop("batchSize"))
        msg.pools.batch_wait.CopyFrom(_to_duration_msg("pools.batchWait", p.pop("batchWait")))
        if p:
            raise InvalidArgument(f"unknown field(s) in pools: {', '.join(sorted(p))}")
    if "cache" in data:
        c = {"ttl": "5m", "maxEntries": defaults.cache.max_entries, **data["cache"]}
        msg.cache.ttl.CopyFrom(_to_duration_msg("cache.ttl", c.pop("ttl")))
        msg.cache.max_entries = _int("cache.maxEntries", c.pop("maxEntries"))
        if c:
            raise InvalidArgument(f"unknown field(s) in cache: {', '.join(sorted(c))}")
    if "heartbeat" in data:
        h = {"interval": "5s", "timeout": "200ms", **data["heartbeat"]}
        msg.heartbeat.interval.CopyFrom(_to_duration_msg("heartbeat.interval", h.pop("interval")))
        msg.heartbeat.timeout.CopyFrom(_to_duration_msg("heartbeat.timeout", h.pop("timeout")))
        if h:
            raise InvalidArgument(f"unknown field(s) in heartbeat: {', '.join(sorted(h))}")
    if "kernels" in data:
        k = {"warm": [], "parallel": True, **data["kernels"]}
        warm = k.pop("warm")
        if not isinstance(warm, list) or not all(isinstance(w, str) for w in warm):
            raise InvalidArgument("kernels.warm must be a list of kernel names")
        msg.kernels.warm.extend(warm)
        msg.kernels.parallel = bool(k.pop("parallel"))
        if k:
            raise InvalidArgument(f"unknown field(s) in kernels: {', '.join(sorted(k))}")
    return msg
