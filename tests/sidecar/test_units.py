"""Pure units: cache (fake clock), histograms (merge = union, quantile bound), live config, codegen."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfpilot.v1 import agent_pb2 as pb
from perfpilot_agent.errors import InvalidArgument
from perfpilot_agent.liveconfig import LiveConfig, merge_proto, proto_from_dict, to_proto
from perfpilot_agent.runtime.cache import TTLCache
from perfpilot_agent.runtime.histogram import BOUNDS, RELATIVE_ERROR, Histogram
from scripts import genprotos


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttl_expiry_with_fake_clock() -> None:
    clock = Clock()
    c = TTLCache(max_entries=10, ttl=5.0, clock=clock)
    c.put("a", 1)
    c.put("b", 2, ttl=20.0)
    clock.now += 4.9
    assert c.get("a") == (1, pytest.approx(0.1))
    clock.now += 0.1
    assert c.get("a") is None  # expired exactly at its deadline
    assert c.get("b") is not None
    clock.now += 100
    assert c.sweep() == 1 and len(c) == 0
    assert (c.counters.hits, c.counters.misses, c.counters.expirations) == (2, 1, 2)


def test_cache_lru_eviction_and_counters() -> None:
    c = TTLCache(max_entries=3, ttl=60.0, clock=Clock())
    for k in "abc":
        c.put(k, k)
    assert c.get("a") is not None  # a is now most recent; b is the LRU
    assert c.put("d", "d") == 1
    assert c.get("b") is None and c.get("a") is not None and c.get("d") is not None
    assert c.counters.evictions == 1
    assert c.reconfigure(max_entries=1, ttl=60.0) == 2  # shrinking evicts at once
    assert list(c._data) == ["d"]


def test_cache_byte_bound_and_replace() -> None:
    c = TTLCache(max_entries=100, ttl=60.0, max_bytes=10, clock=Clock())
    c.put("a", b"x", size=4)
    c.put("b", b"x", size=4)
    c.put("a", b"y", size=4)  # replacing does not double count
    assert c.bytes == 8
    c.put("c", b"z", size=4)  # 12 > 10: LRU ("b") goes
    assert c.get("b") is None and c.bytes == 8


def test_cache_invalidate_prefix() -> None:
    c = TTLCache(max_entries=100, ttl=60.0, clock=Clock())
    for k in ("user/1", "user/2", "users", "item/1"):
        c.put(k, 1)
    assert c.invalidate("user/") == 2
    assert sorted(c._data) == ["item/1", "users"]
    assert c.invalidate("") == 2 and len(c) == 0
    assert c.counters.invalidations == 4


durations = st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), max_size=200)


@settings(max_examples=60, deadline=None)
@given(durations, durations)
def test_histogram_merge_equals_histogram_of_union(a: list[float], b: list[float]) -> None:
    ha, hb, hu = Histogram(), Histogram(), Histogram()
    ha.observe_many(a)
    hb.observe_many(b)
    hu.observe_many(a + b)
    merged = Histogram.from_proto(ha.to_proto())
    merged.merge(Histogram.from_proto(hb.to_proto()))
    assert merged.counts == hu.counts and merged.count == hu.count
    assert math.isclose(merged.sum, hu.sum, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=BOUNDS[0], max_value=BOUNDS[-1], allow_nan=False, exclude_min=True),
                min_size=1, max_size=300),
       st.sampled_from([0.5, 0.95, 0.99]))
def test_quantile_within_documented_bound(values: list[float], q: float) -> None:
    h = Histogram()
    h.observe_many(values)
    exact = float(np.quantile(np.array(values), q, method="inverted_cdf"))
    assert abs(h.quantile(q) - exact) / exact <= RELATIVE_ERROR + 1e-9


def test_histogram_wire_format() -> None:
    h = Histogram()
    h.observe(0.003)
    msg = h.to_proto()
    assert len(msg.bounds) == len(msg.counts) and math.isinf(msg.bounds[-1])
    assert msg.count == 1 and sum(msg.counts) == 1
    assert Histogram().quantile(0.5) == 0.0
    with pytest.raises(ValueError):
        Histogram.from_proto(pb.Histogram(bounds=[1.0], counts=[0, 0]))


def test_crd_shaped_config_round_trip() -> None:
    spec = {"heartbeat": {"interval": "5s", "timeout": "200ms"},
            "pools": {"processWorkers": 3, "threadWorkers": 8, "maxQueue": 1000, "batchSize": 100, "batchWait": "10ms"},
            "cache": {"ttl": "5m", "maxEntries": 10000}, "kernels": {"warm": [], "parallel": False}}
    cfg = merge_proto(LiveConfig(), proto_from_dict(spec), lambda: frozenset())
    assert cfg.pools.process_workers == 3 and cfg.cache.ttl == 300 and cfg.heartbeat.timeout == pytest.approx(0.2)
    assert cfg.pools.batch_wait == pytest.approx(0.01) and cfg.kernels.parallel is False
    again = merge_proto(LiveConfig(), to_proto(cfg), lambda: frozenset())
    assert again == cfg
    with pytest.raises(InvalidArgument, match="unknown field"):
        proto_from_dict({"pools": {"procesWorkers": 2}})
    with pytest.raises(InvalidArgument, match="cache.ttl: invalid duration"):
        proto_from_dict({"cache": {"ttl": "5 minutes"}})


def test_warm_kernels_without_kernels_package() -> None:
    with pytest.raises(InvalidArgument, match="no kernels installed"):
        merge_proto(LiveConfig(), pb.AgentConfig(kernels=pb.KernelsConfig(warm=["cosine_topk"])), lambda: None)


def test_genprotos_check_passes_on_committed_stubs() -> None:
    assert genprotos.main(["--check"]) == 0


def test_genprotos_check_fails_on_stale_stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(genprotos.OUT_ROOT / "perfpilot", tmp_path / "perfpilot")
    stub = tmp_path / "perfpilot" / "v1" / "agent_pb2_grpc.py"
    stub.write_text(stub.read_text() + "\n# hand edit\n")
    monkeypatch.setattr(genprotos, "OUT_ROOT", tmp_path)
    assert genprotos.main(["--check"]) == 1
    assert genprotos.main([]) == 0  # regenerating fixes it
    assert genprotos.main(["--check"]) == 0


def test_settings_defaults_flags_and_env(tmp_path: Path) -> None:
    from perfpilot_agent.config import DEFAULT_HEALTH_PORT, DEFAULT_METRICS_PORT, DEFAULT_PORT, load_settings

    s = load_settings([], env={})
    assert (s.port, s.health_port, s.metrics_port, s.listen_host, s.ca_file) == (
        DEFAULT_PORT, DEFAULT_HEALTH_PORT, DEFAULT_METRICS_PORT, "127.0.0.1", "")
    assert s.socket_path.endswith("agent.sock") and s.initial_config == {}
    env = {"PERFPILOT_PORT": "7000", "PERFPILOT_SOCKET": "/tmp/x.sock", "PERFPILOT_CA_FILE": "/ca/ca.crt",
           "PERFPILOT_HEALTH_PORT": "7002", "PERFPILOT_CONFIG": '{"pools": {"processWorkers": 3}}',
           "PERFPILOT_GRACE": "2.5"}
    s = load_settings(["--port", "7001"], env=env)
    assert (s.port, s.health_port, s.socket_path, s.ca_file, s.grace) == (7001, 7002, "/tmp/x.sock", "/ca/ca.crt", 2.5)
    assert s.initial_config == {"pools": {"processWorkers": 3}}  # flag beats env
    with pytest.raises(SystemExit):
        load_settings(["--port", "70000"], env={})


def test_uncollected_output_segments_are_reaped() -> None:
    from perfpilot_agent.runtime.tensors import SHM_DIR, OutputSegments

    outs = OutputSegments(grace=3600)
    ref = outs.create(np.arange(10, dtype=np.float32))
    path = os.path.join(SHM_DIR, ref.name)
    assert np.fromfile(path, np.float32)[9] == 9.0  # the segment exists and holds the data
    assert outs.reap() == 0  # still within its grace period
    assert outs.reap(everything=True) == 1
    assert not os.path.exists(path)
