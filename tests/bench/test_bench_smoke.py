"""Fast checks of the benchmark's pure helpers: percentiles, entries, targets and the result files.

No timings are asserted and nothing is started: fake figures go through the writer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import agent_bench, report, shared_bench
from bench.common import entry, failed_entry, percentile
from bench.run import KERNEL_KEYS


def test_percentile_is_nearest_rank() -> None:
    xs = list(range(1, 101))  # 1..100
    assert percentile(xs, 0.5) == 50
    assert percentile(xs, 0.99) == 99
    assert percentile(xs, 1.0) == 100
    assert percentile(list(reversed(xs)), 0.01) == 1
    assert percentile([7.5], 0.99) == 7.5
    assert percentile([3, 1, 2], 0.5) == 2
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile(xs, 0.0)


def test_entry_ratio_is_value_over_baseline() -> None:
    e = entry(30.0, "us", 20.0, "n")
    assert e == {"value": 30.0, "unit": "us", "baseline": 20.0, "ratio": 1.5, "note": "n"}
    assert math.isnan(entry(1.0, "x", 0.0, "")["ratio"])
    assert failed_entry("ms", "boom")["note"].startswith("NOT MEASURED")


def test_every_required_key_has_a_producer() -> None:
    produced = set(agent_bench.UNITS) | set(KERNEL_KEYS) | set(shared_bench.UNITS)
    assert set(report.REQUIRED) <= produced
    assert set(produced) <= set(report.TARGETS)


def test_verdicts() -> None:
    assert report.verdict("heartbeat_p99_us_uds", entry(120, "us", 100, "")) == "yes"
    assert report.verdict("heartbeat_p99_us_uds", entry(130, "us", 100, "")) == "NO"
    assert report.verdict("load_errors", entry(0, "calls", 0, "")) == "yes"  # ratio NaN, value target
    assert report.verdict("load_errors", entry(3, "calls", 0, "")) == "NO"
    assert report.verdict("events_per_s", failed_entry("events/s", "x")) == "n/a"
    assert report.verdict("idle_cpu_millicores", entry(1, "millicores", 1, "")) == "-"
    assert report.target_text("events_per_s") == "value >= 100,000"


def test_writer_produces_every_required_key(tmp_path: Path) -> None:
    fake = {k: entry(float(i + 1), "u", 2.0, f"note {k}") for i, k in enumerate(report.REQUIRED)}
    fake["idle_cpu_millicores"] = failed_entry("millicores", "not run")
    meta = {"timestamp": "2025-01-01T00:00:00+00:00", "mode": "quick", "cpu_count": 2}
    paths = report.write(fake, meta, tmp_path)
    assert [p.name for p in paths] == ["latest.json", "latest-meta.json", "latest.md"]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert list(data) == list(report.REQUIRED)  # table order, nothing but figures (meta is separate)
    for key, e in data.items():
        assert set(e) == {"value", "unit", "baseline", "ratio", "note"}, key
    assert data["idle_cpu_millicores"]["value"] is None  # NaN is written as null
    assert json.loads((tmp_path / "latest-meta.json").read_text())["mode"] == "quick"
    md = (tmp_path / "latest.md").read_text()
    assert "| key | value | unit | baseline | ratio | target | met? |" in md
    for key in report.REQUIRED:
        assert f"| {key} |" in md
