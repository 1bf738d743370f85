"""From a PerfProfile spec to the sidecar's live config (the Configure request).

Pure: the CRD has already validated and defaulted the spec; this only converts units.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_operator.logic.units import parse_duration


def _duration(text: str) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(parse_duration(text) * 1e9))
    return d


def agent_config(spec: dict[str, Any]) -> pb.AgentConfig:
    """The AgentConfig for a profile spec; absent sections stay absent (the agent keeps its own)."""
    cfg = pb.AgentConfig()
    if pools := spec.get("pools"):
        p = cfg.pools
        p.process_workers = int(pools.get("processWorkers", 2))
        p.thread_workers = int(pools.get("threadWorkers", 8))
        p.max_queue = int(pools.get("maxQueue", 1000))
        p.batch_size = int(pools.get("batchSize", 100))
        p.batch_wait.CopyFrom(_duration(pools.get("batchWait", "10ms")))
    if cache := spec.get("cache"):
        cfg.cache.ttl.CopyFrom(_duration(cache.get("ttl", "5m")))
        cfg.cache.max_entries = int(cache.get("maxEntries", 10000))
    if hb := spec.get("heartbeat"):
        cfg.heartbeat.interval.CopyFrom(_duration(hb.get("interval", "5s")))
        cfg.heartbeat.timeout.CopyFrom(_duration(hb.get("timeout", "200ms")))
    if kernels := spec.get("kernels"):
        cfg.kernels.warm.extend(kernels.get("warm", []))
        cfg.kernels.parallel = bool(kernels.get("parallel", True))
    return cfg


def configure_request(spec: dict[str, Any], generation: int) -> pb.ConfigureRequest:
    return pb.ConfigureRequest(generation=generation, config=agent_config(spec))
