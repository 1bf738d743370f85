"""The live config: CRD-shaped dict -> AgentConfig message -> validated LiveConfig, and back.

Used by the operator (profile spec -> Configure request), by the sidecar (--config and Configure
validation) and by the client (the app's read-only view). Every error is a ConfigError whose
message starts with the field in CRD spelling ("pools.maxQueue must be between 1 and 1000000,
got 0"), so the sidecar answers INVALID_ARGUMENT with it and the operator surfaces it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf.duration_pb2 import Duration

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_contract import durations
from perfpilot_contract import limits as L
from perfpilot_contract.durations import NS_PER_SECOND


class ConfigError(ValueError):
    """An invalid live-config value; the message names the field (CRD spelling)."""


def _s(limit: L.Limit) -> float:
    return limit.number / NS_PER_SECOND


@dataclass(frozen=True)
class Pools:
    """spec.pools: kernel workers, the kernel admission limit and the client's timing batches."""

    process_workers: int = L.PROCESS_WORKERS.number
    thread_workers: int = L.THREAD_WORKERS.number
    max_queue: int = L.MAX_QUEUE.number
    batch_size: int = L.BATCH_SIZE.number
    batch_wait: float = _s(L.BATCH_WAIT)
    """Seconds."""


@dataclass(frozen=True)
class L1:
    """spec.cache.l1: the client's in-process near-cache (off by default; sizes per app process)."""

    enabled: bool = bool(L.L1_ENABLED.default)
    max_entries: int = L.L1_MAX_ENTRIES.number
    max_bytes: int = L.L1_MAX_BYTES.number
    ttl: float = _s(L.L1_TTL)
    """Seconds."""
    max_value_bytes: int = L.L1_MAX_VALUE_BYTES.number


@dataclass(frozen=True)
class Cache:
    """spec.cache: default TTL (seconds; 0 = values without their own TTL are not cached), capacity
    and the clients' L1."""

    ttl: float = _s(L.CACHE_TTL)
    max_entries: int = L.CACHE_MAX_ENTRIES.number
    l1: L1 = field(default_factory=L1)


@dataclass(frozen=True)
class Heartbeat:
    """spec.heartbeat: expected interval and the slow threshold (seconds)."""

    interval: float = _s(L.HEARTBEAT_INTERVAL)
    timeout: float = _s(L.HEARTBEAT_TIMEOUT)


@dataclass(frozen=True)
class Kernels:
    """spec.kernels: kernels compiled before readiness, and numba parallel mode."""

    warm: tuple[str, ...] = ()
    parallel: bool = bool(L.KERNELS_PARALLEL.default)


@dataclass(frozen=True)
class LiveConfig:
    """The whole live config; immutable, replaced as a unit on Configure."""

    pools: Pools = field(default_factory=Pools)
    cache: Cache = field(default_factory=Cache)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    kernels: Kernels = field(default_factory=Kernels)


# -- checks (shared by Configure, --config and CachePut) -------------------------------------------


def check_int(limit: L.Limit, value: int) -> int:
    """`value` within the field's bounds, else ConfigError naming it."""
    if not limit.lo <= value <= limit.hi:
        raise ConfigError(f"{limit.path} must be between {limit.lo} and {limit.hi}, got {value}")
    return value


def check_duration_ns(limit: L.Limit, d: Duration, *, path: str | None = None) -> int:
    """Nanoseconds of a well-formed Duration within the field's bounds (durations: one sign rule)."""
    where = path or limit.path
    try:
        ns = durations.from_proto(where, d)
    except durations.DurationError as exc:
        raise ConfigError(str(exc)) from None
    if not limit.lo <= ns <= limit.hi:
        raise ConfigError(f"{where} must be between {durations.format_ns(limit.lo)} and "
                          f"{durations.format_ns(limit.hi)}, got {durations.format_ns(ns)}")
    return ns


def check_duration(limit: L.Limit, d: Duration, *, path: str | None = None) -> float:
    """Like check_duration_ns, in seconds (what the runtime works in)."""
    return check_duration_ns(limit, d, path=path) / NS_PER_SECOND


def check_warm(names: Iterable[str]) -> tuple[str, ...]:
    """Unique known kernel names, at most MAX_WARM; the error lists the known names."""
    out: list[str] = []
    for i, name in enumerate(names):
        if name not in L.KERNEL_NAMES:
            raise ConfigError(f"{L.KERNELS_WARM.path}[{i}]: unknown kernel {name[:80]!r}; "
                              f"known: {', '.join(L.KERNEL_NAMES)}")
        if name in out:
            raise ConfigError(f"{L.KERNELS_WARM.path}[{i}] repeats kernel {name!r}")
        out.append(name)
    if len(out) > L.MAX_WARM:
        raise ConfigError(f"{L.KERNELS_WARM.path} may list at most {L.MAX_WARM} kernels, got {len(out)}")
    return tuple(out)


def _check_l1(m: pb.L1CacheConfig) -> L1:
    if not m.HasField("ttl"):
        raise ConfigError(f"{L.L1_TTL.path} is required when cache.l1 is set")
    return L1(enabled=m.enabled, max_entries=check_int(L.L1_MAX_ENTRIES, m.max_entries),
              max_bytes=check_int(L.L1_MAX_BYTES, m.max_bytes), ttl=check_duration(L.L1_TTL, m.ttl),
              max_value_bytes=check_int(L.L1_MAX_VALUE_BYTES, m.max_value_bytes))


def merge(current: LiveConfig, msg: pb.AgentConfig) -> LiveConfig:
    """Validate `msg` and return `current` with the sections present in `msg` replaced."""
    cfg = current
    if msg.HasField("pools"):
        p = msg.pools
        pools = Pools(
            process_workers=check_int(L.PROCESS_WORKERS, p.process_workers),
            thread_workers=check_int(L.THREAD_WORKERS, p.thread_workers),
            max_queue=check_int(L.MAX_QUEUE, p.max_queue),
            batch_size=check_int(L.BATCH_SIZE, p.batch_size),
            batch_wait=check_duration(L.BATCH_WAIT, p.batch_wait) if p.HasField("batch_wait") else 0.0,
        )
        if pools.batch_size > pools.max_queue:
            raise ConfigError(f"pools.batchSize ({pools.batch_size}) must be <= pools.maxQueue ({pools.max_queue})")
        cfg = replace(cfg, pools=pools)
    if msg.HasField("cache"):
        c = msg.cache
        if not c.HasField("ttl"):
            raise ConfigError("cache.ttl is required when cache is set")
        cfg = replace(cfg, cache=Cache(ttl=check_duration(L.CACHE_TTL, c.ttl),
                                       max_entries=check_int(L.CACHE_MAX_ENTRIES, c.max_entries),
                                       l1=_check_l1(c.l1) if c.HasField("l1") else L1()))
    if msg.HasField("heartbeat"):
        h = msg.heartbeat
        for name in ("interval", "timeout"):
            if not h.HasField(name):
                raise ConfigError(f"heartbeat.{name} is required when heartbeat is set")
        interval = check_duration_ns(L.HEARTBEAT_INTERVAL, h.interval)
        timeout = check_duration_ns(L.HEARTBEAT_TIMEOUT, h.timeout)
        if timeout >= interval:
            raise ConfigError(f"heartbeat.timeout ({durations.format_ns(timeout)}) must be shorter than "
                              f"heartbeat.interval ({durations.format_ns(interval)})")
        cfg = replace(cfg, heartbeat=Heartbeat(interval=interval / NS_PER_SECOND, timeout=timeout / NS_PER_SECOND))
    if msg.HasField("kernels"):
        k = msg.kernels
        cfg = replace(cfg, kernels=Kernels(warm=check_warm(k.warm), parallel=k.parallel))
    return cfg


def to_proto(cfg: LiveConfig) -> pb.AgentConfig:
    """The full config as a message (every section set)."""
    d = durations.to_proto
    ns = durations.seconds_to_ns
    l1 = cfg.cache.l1
    return pb.AgentConfig(
        pools=pb.PoolsConfig(
            process_workers=cfg.pools.process_workers, thread_workers=cfg.pools.thread_workers,
            max_queue=cfg.pools.max_queue, batch_size=cfg.pools.batch_size,
            batch_wait=d(ns(cfg.pools.batch_wait)),
        ),
        cache=pb.CacheConfig(ttl=d(ns(cfg.cache.ttl)), max_entries=cfg.cache.max_entries, l1=pb.L1CacheConfig(
            enabled=l1.enabled, max_entries=l1.max_entries, max_bytes=l1.max_bytes, ttl=d(ns(l1.ttl)),
            max_value_bytes=l1.max_value_bytes)),
        heartbeat=pb.HeartbeatConfig(interval=d(ns(cfg.heartbeat.interval)), timeout=d(ns(cfg.heartbeat.timeout))),
        kernels=pb.KernelsConfig(warm=list(cfg.kernels.warm), parallel=cfg.kernels.parallel),
    )


def read_proto(msg: pb.AgentConfig) -> LiveConfig:
    """Unit conversion only, no validation: the app's view of what the sidecar applied."""
    def sec(d: Duration) -> float:
        return d.seconds + d.nanos / NS_PER_SECOND

    p, c, h, k = msg.pools, msg.cache, msg.heartbeat, msg.kernels
    return LiveConfig(
        pools=Pools(p.process_workers, p.thread_workers, p.max_queue, p.batch_size, sec(p.batch_wait)),
        cache=Cache(sec(c.ttl), c.max_entries, L1(c.l1.enabled, c.l1.max_entries, c.l1.max_bytes, sec(c.l1.ttl),
                                                  c.l1.max_value_bytes)),
        heartbeat=Heartbeat(sec(h.interval), sec(h.timeout)),
        kernels=Kernels(tuple(k.warm), k.parallel),
    )


# -- CRD-shaped dicts (the profile spec, --config / PERFPILOT_CONFIG) -------------------------------


def live_sections(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The live-config sections of a profile spec (present ones only, even when empty)."""
    return {name: spec[name] for name in L.SECTIONS if name in spec and spec[name] is not None}


def _int(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    if not -(2**31) <= value < 2**31:
        raise ConfigError(f"{path} is out of range: {value}")
    return value


def _ns(path: str, value: Any) -> int:
    if not isinstance(value, str):
        raise ConfigError(f"{path} must be a duration string such as 300ms or 5m, got {value!r}")
    try:
        ns = durations.parse_ns(value)
    except durations.DurationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if abs(ns) > durations.MAX_PROTO_SECONDS * NS_PER_SECOND:
        raise ConfigError(f"{path} is out of range: {value!r}")
    return ns


def _section(data: Mapping[str, Any], name: str, fields: Iterable[str]) -> dict[str, Any]:
    section = data[name]
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{name} must be an object, got {type(section).__name__}")
    unknown = set(section) - set(fields)
    if unknown:
        raise ConfigError(f"unknown field(s) in {name}: {', '.join(sorted(map(str, unknown)))}")
    return dict(section)


def _clamp(limit: L.Limit, value: int) -> int:
    return max(limit.lo, min(limit.hi, value))


def _l1_config(cache: Mapping[str, Any]) -> pb.L1CacheConfig:
    """cache.l1 (absent or empty: the contract's defaults, sent whole like every section)."""
    c = _section(cache, "l1", ("enabled", "maxEntries", "maxBytes", "ttl", "maxValueBytes")) if "l1" in cache else {}
    enabled = c.get("enabled", L.L1_ENABLED.default)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{L.L1_ENABLED.path} must be true or false, got {enabled!r}")
    return pb.L1CacheConfig(
        enabled=enabled,
        max_entries=_int(L.L1_MAX_ENTRIES.path, c.get("maxEntries", L.L1_MAX_ENTRIES.number)),
        max_bytes=_int(L.L1_MAX_BYTES.path, c.get("maxBytes", L.L1_MAX_BYTES.number)),
        ttl=durations.to_proto(_ns(L.L1_TTL.path, c["ttl"]) if "ttl" in c else L.L1_TTL.number),
        max_value_bytes=_int(L.L1_MAX_VALUE_BYTES.path, c.get("maxValueBytes", L.L1_MAX_VALUE_BYTES.number)),
    )


def agent_config(data: Mapping[str, Any]) -> pb.AgentConfig:
    """AgentConfig for CRD-shaped live sections; a present section is sent whole (defaults filled).

    Effective defaults of pairs: unset batchSize = min(100, maxQueue); unset maxQueue =
    max(1000, batchSize); unset heartbeat.timeout = min(200ms, interval / 2); unset
    heartbeat.interval = max(5s, 2 × timeout) -- so the default of an unset field always fits
    the field the user set (both set: the sidecar checks the pair and names it).
    """
    unknown = set(data) - set(L.SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(map(str, unknown)))}; "
                          f"live sections are {', '.join(L.SECTIONS)}")
    msg = pb.AgentConfig()
    if "pools" in data:
        p = _section(data, "pools", ("processWorkers", "threadWorkers", "maxQueue", "batchSize", "batchWait"))
        mq = _int("pools.maxQueue", p["maxQueue"]) if "maxQueue" in p else None
        bs = _int("pools.batchSize", p["batchSize"]) if "batchSize" in p else None
        if mq is None:
            mq = _clamp(L.MAX_QUEUE, max(L.MAX_QUEUE.number, bs if bs is not None else 0))
        if bs is None:
            bs = _clamp(L.BATCH_SIZE, min(L.BATCH_SIZE.number, mq))
        msg.pools.CopyFrom(pb.PoolsConfig(
            process_workers=_int("pools.processWorkers", p.get("processWorkers", L.PROCESS_WORKERS.number)),
            thread_workers=_int("pools.threadWorkers", p.get("threadWorkers", L.THREAD_WORKERS.number)),
            max_queue=mq, batch_size=bs,
            batch_wait=durations.to_proto(
                _ns("pools.batchWait", p["batchWait"]) if "batchWait" in p else L.BATCH_WAIT.number),
        ))
    if "cache" in data:
        c = _section(data, "cache", ("ttl", "maxEntries", "l1"))
        msg.cache.CopyFrom(pb.CacheConfig(
            ttl=durations.to_proto(_ns("cache.ttl", c["ttl"]) if "ttl" in c else L.CACHE_TTL.number),
            max_entries=_int("cache.maxEntries", c.get("maxEntries", L.CACHE_MAX_ENTRIES.number)),
            l1=_l1_config(c),
        ))
    if "heartbeat" in data:
        h = _section(data, "heartbeat", ("interval", "timeout"))
        interval = _ns("heartbeat.interval", h["interval"]) if "interval" in h else None
        timeout = _ns("heartbeat.timeout", h["timeout"]) if "timeout" in h else None
        if interval is None:
            interval = _clamp(L.HEARTBEAT_INTERVAL,
                              max(L.HEARTBEAT_INTERVAL.number, 2 * timeout if timeout is not None else 0))
        if timeout is None:
            timeout = _clamp(L.HEARTBEAT_TIMEOUT, min(L.HEARTBEAT_TIMEOUT.number, interval // 2))
        msg.heartbeat.CopyFrom(pb.HeartbeatConfig(interval=durations.to_proto(interval),
                                                  timeout=durations.to_proto(timeout)))
    if "kernels" in data:
        k = _section(data, "kernels", ("warm", "parallel"))
        warm = k.get("warm", [])
        if not isinstance(warm, list) or not all(isinstance(w, str) for w in warm):
            raise ConfigError(f"kernels.warm must be a list of kernel names ({', '.join(L.KERNEL_NAMES)})")
        parallel = k.get("parallel", L.KERNELS_PARALLEL.default)
        if not isinstance(parallel, bool):
            raise ConfigError(f"kernels.parallel must be true or false, got {parallel!r}")
        msg.kernels.CopyFrom(pb.KernelsConfig(warm=warm, parallel=parallel))
    return msg


def configure_request(spec: Mapping[str, Any], generation: int) -> pb.ConfigureRequest:
    """The Configure request for a profile spec at `generation`."""
    return pb.ConfigureRequest(generation=generation, config=agent_config(live_sections(spec)))


def from_dict(data: Mapping[str, Any], current: LiveConfig | None = None) -> LiveConfig:
    """Convert and validate CRD-shaped live sections in one step (for --config and tests)."""
    return merge(current or LiveConfig(), agent_config(data))
