"""Targets, the results table and the files under bench/results/.

Pure (no gRPC, no NumPy): the unit test checks that every required key is written and that targets
are evaluated as documented, with fake figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.common import Entry
from bench.node_bench import TARGETS as NODE_TARGETS
from bench.operator_bench import TARGETS as OPERATOR_TARGETS

Target = tuple[str, str, float] | None
"""(field, operator, threshold), e.g. ("ratio", "<=", 1.25); None = reported without a target."""

TARGETS: dict[str, Target] = {
    "heartbeat_p50_us_uds": ("ratio", "<=", 1.25),
    "heartbeat_p99_us_uds": ("ratio", "<=", 1.25),
    "heartbeat_p99_us_tcp": ("ratio", "<=", 1.25),
    "rps_one_core": ("ratio", ">=", 0.8),
    "events_per_s": ("value", ">=", 100_000),
    "kernel_cosine_topk_gbps": ("ratio", ">=", 4),
    "kernel_weighted_mean_gbps": None,
    "kernel_bandwidth_fraction": ("ratio", ">=", 0.70),
    "pool_speedup_2_workers": ("ratio", ">=", 1.8),
    "shm_vs_pickle_100mb": ("ratio", ">=", 50),
    "shm_shared_vs_pickle_100mb": None,
    "cache_hit_speedup": ("ratio", ">=", 100),
    "kernel_cache_hit_speedup": None,
    "cache_l1_hit_speedup": ("ratio", ">=", 1000),
    "cache_l1_vs_l2_hit": None,
    "cache_invalidation_p99_ms": None,
    "cache_read_mostly_ops_per_s": None,
    "idle_rss_mb_heartbeat_only": ("value", "<=", 50),
    "idle_rss_mb_kernels_warm": None,
    "idle_cpu_millicores": None,
    "load_p50_ms": None,
    "load_p99_ms": ("value", "<", 50),
    "load_errors": ("value", "==", 0),
    "load_calls_per_s": ("value", ">=", 2000),
    **OPERATOR_TARGETS,
    **NODE_TARGETS,
}
"""Targets by key, in the table's order."""

REQUIRED: tuple[str, ...] = tuple(k for k in TARGETS if k != "shm_shared_vs_pickle_100mb"
                                  and k not in OPERATOR_TARGETS and k not in NODE_TARGETS)
"""Keys that must be present in latest.json (shm_shared_vs_pickle_100mb is an extra from kernels_bench; the
operator and real-node figures need the local cluster and come from full runs only: `make bench`,
`make bench-operator`, `make bench-node`)."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b, "==": lambda a, b: a == b,
}


def target_text(key: str) -> str:
    """The target as shown in the table, e.g. 'ratio <= 1.25' ('-' when there is none)."""
    t = TARGETS.get(key)
    return "-" if t is None else f"{t[0]} {t[1]} {t[2]:,g}"


def verdict(key: str, e: Entry) -> str:
    """'yes' / 'NO' against the target, '-' without a target, 'n/a' when the field was not measured."""
    t = TARGETS.get(key)
    if t is None:
        return "-"
    field, op, threshold = t
    x = e.get(field)
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a"
    return "yes" if _OPS[op](x, threshold) else "NO"


def fmt(x: Any) -> str:
    """Numbers with ~4 significant digits and thousands separators; NaN as 'n/a'."""
    if not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 10:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.3g}"


def ordered(results: Mapping[str, Entry]) -> list[str]:
    """Known keys in table order, then any others alphabetically."""
    return [k for k in TARGETS if k in results] + sorted(k for k in results if k not in TARGETS)


def table(results: Mapping[str, Entry]) -> str:
    """The markdown table: key, value, unit, baseline, ratio, target, met?"""
    lines = ["| key | value | unit | baseline | ratio | target | met? |", "|---|---:|---|---:|---:|---|---|"]
    for key in ordered(results):
        e = results[key]
        lines.append(f"| {key} | {fmt(e['value'])} | {e['unit']} | {fmt(e['baseline'])} | {fmt(e['ratio'])} | "
                     f"{target_text(key)} | {verdict(key, e)} |")
    return "\n".join(lines)


def notes(results: Mapping[str, Entry]) -> str:
    """One bullet per figure with its note (definitions, baselines, caveats)."""
    return "\n".join(f"- **{k}**: {results[k]['note']}" for k in ordered(results))


def markdown(results: Mapping[str, Entry], meta: Mapping[str, Any]) -> str:
    """The whole latest.md."""
    head = ", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, (dict, list)))
    return (f"# perfpilot benchmark results\n\n{head}\n\nratio = value / baseline; every baseline was measured in the "
            f"same run.\n\n{table(results)}\n\n## Notes\n\n{notes(results)}\n")


def _json_safe(x: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def write(results: Mapping[str, Entry], meta: Mapping[str, Any], outdir: Path, stem: str = "latest") -> list[Path]:
    """Write <stem>.json (figures only), <stem>-meta.json and <stem>.md; returns the paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    data = {k: {f: results[k][f] for f in ("value", "unit", "baseline", "ratio", "note")} for k in ordered(results)}
    paths = [outdir / f"{stem}.json", outdir / f"{stem}-meta.json", outdir / f"{stem}.md"]
    paths[0].write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    paths[1].write_text(json.dumps(_json_safe(dict(meta)), indent=2) + "\n")
    paths[2].write_text(markdown(results, meta))
    return paths
