"""The Grafana dashboards (dashboards/, committed as charts/perfpilot/dashboards/*.json).

* the committed JSON is what the generator produces now (`make dashboards` regenerates it);
* every query reads only series that exist: metric names and labels come from the real
  prometheus-client objects of the operator (perfpilot_operator.metrics) and of the sidecar
  (perfpilot_agent.metrics), label values the code can emit from the code's own constants;
* every expression parses, by promtool (Debian's prometheus package; skipped without it);
* each dashboard has a uid and a title, defines every variable its queries use, and every panel
  says what it shows and what to do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import dashboards
from dashboards.__main__ import stale
from tests.dashboards import promql

# Labels the scrape adds to every sidecar series: a PodMonitor's (or kubernetes_sd's relabelled)
# target labels, which the Sidecars dashboard selects on (docs/dashboards.md).
SIDECAR_TARGET_LABELS = frozenset({"namespace", "pod"})


# ------------------------------------------------------------------------------------ catalogue
@dataclass(frozen=True)
class Family:
    """One metric family as prometheus-client exposes it."""

    name: str                    # family name (counters without _total)
    type: str                    # counter, gauge, histogram
    labels: frozenset[str]       # its own labels plus the scrape's target labels

    def series(self) -> dict[str, frozenset[str]]:
        """Exposed series name -> labels (what PromQL can select)."""
        if self.type == "counter":
            return {f"{self.name}_total": self.labels, f"{self.name}_created": self.labels}
        if self.type == "histogram":
            return {f"{self.name}_bucket": self.labels | {"le"}, f"{self.name}_sum": self.labels,
                    f"{self.name}_count": self.labels, f"{self.name}_created": self.labels}
        return {self.name: self.labels}


def operator_families() -> list[Family]:
    """From the operator's metric objects (perfpilot_operator/metrics.py registers them all)."""
    from perfpilot_operator import metrics

    out = []
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            [desc] = obj.describe()
            out.append(Family(desc.name, desc.type,
                              frozenset(obj._labelnames)))  # noqa: SLF001 - no public getter
    names = {f.name for f in out}
    assert names == {m.name for m in metrics.REGISTRY.collect()}, "module and registry disagree"
    return out


def sidecar_families() -> list[Family]:
    """From the families the sidecar's collector builds for every entry of METRICS."""
    from perfpilot_agent.metrics.collectors import _family
    from perfpilot_agent.metrics.definitions import METRICS

    out = []
    for name, (_kind, labels, _help) in METRICS.items():
        fam = _family(name)
        out.append(Family(fam.name, fam.type, frozenset(labels) | SIDECAR_TARGET_LABELS))
    return out


def catalogue() -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for fam in operator_families() + sidecar_families():
        out.update(fam.series())
    return out


SERIES = catalogue()


def known_label_values() -> dict[tuple[str, str], set[str]]:
    """(series, label) -> every value the code can put there, from the code's constants."""
    from perfpilot_agent.metrics.collectors import QUANTILES
    from perfpilot_operator.logic.alerting import Phase
    from perfpilot_operator.logic.stats import METRICS as PROFILE_METRICS
    from perfpilot_operator.logic.status import Resize, Rollout, compose_status

    # perfpilot_operator_pods{state} is set for every key of status.pods (profilepass.run).
    pod_states = set(compose_status(generation=0, previous={}, pods=[], rollout=Rollout(),
                                    resize=Resize(), refusals=[], observed=None)["pods"])
    return {
        ("perfpilot_operator_profile_metric", "metric"): set(PROFILE_METRICS),
        ("perfpilot_operator_pods", "state"): pod_states,
        ("perfpilot_operator_alert_active", "state"):
            {p.value for p in Phase if p.name != "INACTIVE"},
        **{(f"perfpilot_sidecar_{n}", "quantile"): {q for q, _ in QUANTILES}
           for n in ("heartbeat_quantile_seconds", "app_latency_quantile_seconds",
                     "app_total_latency_quantile_seconds", "kernel_quantile_seconds")},
        ("perfpilot_sidecar_rpc_total", "code"): {c.name for c in grpc.StatusCode},
    }


# ------------------------------------------------------------------------------------ dashboards
COMMITTED = {p.name: json.loads(p.read_text()) for p in sorted(dashboards.OUT_DIR.glob("*.json"))}


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row (rows' collapsed children included)."""
    for p in dash["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def queries(dash: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, expression, legend) of every target."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p["title"], t["expr"], t.get("legendFormat", "")


def variable_selectors(dash: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(variable name, selector, label) of every label_values query variable."""
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            yield (v["name"], *promql.label_values(v["query"]))


def all_expressions() -> list[tuple[str, str]]:
    out = []
    for file, dash in COMMITTED.items():
        out += [(f"{file}: {title}", expr) for title, expr, _ in queries(dash)]
        out += [(f"{file}: ${name}", sel) for name, sel, _ in variable_selectors(dash)]
    return out


def test_the_committed_json_is_what_the_generator_produces() -> None:
    """`make dashboards` and commit: the chart ships the files, not the generator."""
    fresh = dashboards.render()
    assert set(fresh) == set(COMMITTED), "a dashboard file is missing or left over"
    assert stale(fresh) == [], "charts/perfpilot/dashboards is stale: run `make dashboards`"


def test_generation_is_deterministic() -> None:
    assert dashboards.render() == dashboards.render()


def test_stale_json_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check the test above relies on fails on an edited, a missing and an extra file."""
    from dashboards import __main__ as cli

    fresh = dashboards.render()
    for name, text in fresh.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(cli, "OUT_DIR", tmp_path)
    assert cli.stale(fresh) == []
    first = sorted(fresh)[0]
    (tmp_path / first).write_text(fresh[first].replace("perfpilot", "perfpi1ot", 1))
    (tmp_path / "extra.json").write_text("{}")
    assert cli.stale(fresh) == sorted([first, "extra.json"])
    assert cli.main(["--check"]) == 1


def test_both_dashboards_are_shipped() -> None:
    assert {d["title"] for d in COMMITTED.values()} == {"perfpilot / Profiles",
                                                        "perfpilot / Sidecars"}


@pytest.mark.parametrize("file", sorted(COMMITTED))
def test_dashboard_has_uid_title_and_unique_panel_ids(file: str) -> None:
    dash = COMMITTED[file]
    assert dash["uid"] and len(dash["uid"]) <= 40, "Grafana uids are at most 40 characters"
    assert dash["title"] and dash["description"]
    assert "perfpilot" in dash["tags"]
    ids = [p["id"] for p in dash["panels"]] + [c["id"] for p in dash["panels"]
                                               for c in p.get("panels", [])]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]


def test_uids_are_unique() -> None:
    uids = [d["uid"] for d in COMMITTED.values()]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("file", sorted(COMMITTED))
def test_every_panel_explains_itself_and_queries_the_chosen_datasource(file: str) -> None:
    for p in panels(COMMITTED[file]):
        assert len(p.get("description", "")) >= 80, f"{p['title']}: describe what it shows " \
            "and what to do when it looks bad"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        targets = p["targets"]
        assert targets, p["title"]
        refs = [t["refId"] for t in targets]
        assert len(set(refs)) == len(refs) and all(refs), p["title"]
        for t in targets:
            assert t["datasource"] == p["datasource"], p["title"]


@pytest.mark.parametrize("file", sorted(COMMITTED))
def test_variables_used_are_defined_in_order(file: str) -> None:
    """Every $variable in a query, a variable query or a datasource is defined, and a variable
    only uses variables defined before it (Grafana resolves them in that order)."""
    dash = COMMITTED[file]
    defined: list[str] = []
    for v in dash["templating"]["list"]:
        used = promql.variables(json.dumps(v.get("query", ""))) | promql.variables(
            json.dumps(v.get("datasource", "")))
        assert used <= set(defined), f"${v['name']} uses {used - set(defined)} before they exist"
        defined.append(v["name"])
    assert defined[0] == "datasource" and dash["templating"]["list"][0]["query"] == "prometheus"
    for p in panels(dash):
        used = promql.variables(json.dumps(p["targets"])) | promql.variables(
            json.dumps(p["datasource"]))
        assert used <= set(defined), f"{p['title']} uses undefined {used - set(defined)}"
    assert any(promql.variables(expr) for _, expr, _ in queries(dash)), "no query is filtered"


def test_expected_variables() -> None:
    names = {d["title"]: [v["name"] for v in d["templating"]["list"]] for d in COMMITTED.values()}
    assert names == {"perfpilot / Profiles": ["datasource", "namespace", "profile"],
                     "perfpilot / Sidecars": ["datasource", "namespace", "pod"]}


# ------------------------------------------------------------------------------------ metrics
def test_catalogue_comes_from_the_code() -> None:
    """Sanity of the source the checks below use: both registries, every type."""
    assert "perfpilot_operator_alert_active" in SERIES
    assert "perfpilot_operator_scale_events_total" in SERIES          # a counter gets _total
    assert "perfpilot_sidecar_heartbeat_duration_seconds_bucket" in SERIES
    assert "le" in SERIES["perfpilot_sidecar_app_latency_seconds_bucket"]
    assert "perfpilot_sidecar_rpc_total" in SERIES                    # not ..._total_total
    assert len(SERIES) > 60


@pytest.mark.parametrize("where, expr", all_expressions())
def test_queries_read_only_metrics_and_labels_that_exist(where: str, expr: str) -> None:
    reading = promql.read(expr)
    assert reading.selectors, f"{where}: no metric in {expr!r}"
    values = known_label_values()
    available: set[str] = set(reading.new_labels)
    for sel in reading.selectors:
        assert sel.metric in SERIES, f"{where}: {sel.metric} is exported by neither the " \
            "operator nor the sidecar"
        labels = SERIES[sel.metric]
        available |= labels
        for label, op, value in sel.matchers:
            assert label in labels, f"{where}: {sel.metric} has no label {label!r}"
            if op in ("=", "!=") and (sel.metric, label) in values:
                assert value in values[sel.metric, label], \
                    f"{where}: {sel.metric}{{{label}={value!r}}} is never exported"
    for group in reading.grouping:
        assert set(group) <= available, f"{where}: grouping by unknown {set(group) - available}"


@pytest.mark.parametrize("file", sorted(COMMITTED))
def test_legends_name_labels_the_result_has(file: str) -> None:
    """{{label}} in a legend is a label of the series the query returns: for an aggregation,
    one it keeps in every by (...); otherwise one of the metric's."""
    for title, expr, legend in queries(COMMITTED[file]):
        wanted = set(promql.LEGEND.findall(legend))
        reading = promql.read(expr)
        if reading.grouping:
            kept = set.intersection(*(set(g) for g in reading.grouping))
        else:
            kept = set.union(*(set(SERIES[s.metric]) for s in reading.selectors))
        assert wanted <= kept, f"{title}: legend {legend!r} names {wanted - kept}, not in {expr!r}"


@pytest.mark.parametrize("file", sorted(COMMITTED))
def test_variable_queries_list_labels_that_exist(file: str) -> None:
    for name, selector, label in variable_selectors(COMMITTED[file]):
        assert label == name, f"${name} lists {label}"
        [sel] = promql.read(selector).selectors
        assert label in SERIES[sel.metric], f"${name}: {sel.metric} has no label {label}"


def test_the_dashboards_use_the_metrics_that_matter() -> None:
    """The operator's per-profile series and the sidecar families the brief lists are plotted."""
    used = {s.metric for _, e in all_expressions() for s in promql.read(e).selectors}
    for fam in operator_families():
        assert set(fam.series()) & used, f"{fam.name} is on no dashboard"
    for name in ("heartbeat_duration_seconds_bucket", "app_latency_seconds_bucket", "rpc_total",
                 "kernel_duration_seconds_bucket", "cache_hits_total", "cache_evictions_total",
                 "queue_depth", "pool_utilization_ratio", "rejected_total",
                 "process_resident_memory_bytes", "process_cpu_percent",
                 "worker_restarts_total"):
        assert f"perfpilot_sidecar_{name}" in used, name


# ------------------------------------------------------------------------------------ promtool
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian's prometheus package: `make debs`)")


def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Every expression as a recording rule; `promtool check rules` parses each one."""
    rules = [{"record": f"perfpilot:dashboard_check:{i}", "expr": promql.for_promtool(e)}
             for i, e in enumerate(exprs)]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)


@needs_promtool
def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = all_expressions()
    proc = promtool_check([e for _, e in exprs], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(exprs)} rules found" in proc.stdout, proc.stdout


@needs_promtool
def test_promtool_refuses_a_broken_expression(tmp_path: Path) -> None:
    """The check above can fail: an unbalanced parenthesis is reported."""
    proc = promtool_check(['sum(rate(perfpilot_sidecar_rpc_total{pod=~"$pod"}[$__rate_interval])'],
                          tmp_path)
    assert proc.returncode != 0


def test_docs_name_every_dashboard_and_the_values() -> None:
    docs = Path(dashboards.ROOT, "docs", "dashboards.md").read_text()
    for dash in COMMITTED.values():
        assert f"**{dash['title']}** (`{dash['uid']}`)" in docs, dash["title"]
    for value in ("enabled", "labels", "annotations", "namespace"):
        assert f"`grafanaDashboards.{value}`" in docs
