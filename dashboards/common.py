"""Building blocks shared by perfpilot's dashboards (grafana-foundation-sdk builders).

Why a layer over the SDK: every panel needs the same datasource variable, a description, stable
panel ids and refIds (Grafana rewrites missing ids on load, which would make the committed JSON
differ from what Grafana shows and exports), so the dashboards themselves only say what to plot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat as statb
from grafana_foundation_sdk.builders import table as tableb
from grafana_foundation_sdk.builders import timeseries as tsb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

# Every query goes to the data source the viewer picks in the `datasource` variable.
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "perfpilot"
REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Query:
    """One PromQL target: the expression and the legend Grafana shows for its series."""

    expr: str
    legend: str = ""


def datasource_variable() -> db.DatasourceVariable:
    """`$datasource`: any Prometheus data source, so the JSON works in any Grafana."""
    return (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .description("The Prometheus that scrapes perfpilot"))


def label_variable(name: str, label: str, query: str, description: str) -> db.QueryVariable:
    """A multi-select variable over one label's values (`label_values(selector, label)`)."""
    return (db.QueryVariable(name).label(label).description(description)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))


def _targets(queries: Sequence[Query], *, instant: bool = False,
             table: bool = False) -> list[pb.Dataquery]:
    out = []
    for ref, q in zip(REF_IDS, queries, strict=False):
        t = pb.Dataquery().expr(q.expr).ref_id(ref).datasource(DATASOURCE)
        if q.legend:
            t = t.legend_format(q.legend)
        if instant:
            t = t.instant()
        if table:
            t = t.format(pm.PromQueryFormat.TABLE)
        out.append(t)
    assert len(out) == len(queries), "more queries than refIds"
    return out


def _steps(steps: Sequence[tuple[float | None, str]]) -> db.ThresholdsConfig:
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def timeseries(title: str, description: str, queries: Sequence[Query], *, unit: str,
               min_val: float | None = 0, max_val: float | None = None,
               bars: bool = False, steps: bool = False) -> tsb.Panel:
    """A time series panel; the legend is a table with mean / max / last so outliers stand out."""
    p = (tsb.Panel().title(title).description(description).datasource(DATASOURCE)
         .targets(_targets(queries)).unit(unit)
         .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
                 .calcs(["mean", "max", "lastNotNull"]))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                  .sort(cm.SortOrder.DESCENDING))
         .fill_opacity(10).line_width(1).show_points(cm.VisibilityMode.NEVER))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60)
    if steps:
        p = p.line_interpolation(cm.LineInterpolation.STEP_AFTER)
    return p


def stat(title: str, description: str, query: Query, *, unit: str = "short",
         thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),)) -> statb.Panel:
    """A single number (the latest value), coloured by its thresholds."""
    return (statb.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(_targets([query])).unit(unit)
            .thresholds(_steps(thresholds))
            .color_mode(cm.BigValueColorMode.BACKGROUND)
            .graph_mode(cm.BigValueGraphMode.AREA)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def table(title: str, description: str, query: Query, *, hide: Sequence[str]) -> tableb.Panel:
    """The current series of an instant query as rows, one column per label (`hide` dropped)."""
    organize = dm.DataTransformerConfig(
        id_val="organize",
        options={"excludeByName": {name: True for name in hide}, "renameByName": {}})
    # frameIndex and showHeader are required by the table's published options type.
    return (tableb.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(_targets([query], instant=True, table=True))
            .with_transformation(organize).frame_index(0).show_header(True))


class Layout:
    """Adds rows and panels to a dashboard in order, numbering them 1, 2, 3, ...

    The SDK places panels left to right on Grafana's 24-column grid and wraps rows itself."""

    def __init__(self, dashboard: db.Dashboard) -> None:
        self.dashboard = dashboard
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self.dashboard.with_row(db.Row(title).id(self._id()))

    def add(self, panel: Any, *, width: int, height: int) -> None:
        self.dashboard.with_panel(panel.id(self._id()).span(width).height(height))


def new_dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    """A dashboard with perfpilot's defaults: tag, time range, refresh, links to its siblings."""
    return (db.Dashboard(title).uid(uid).description(description).tags([TAG])
            .editable().timezone("browser").time("now-1h", "now").refresh("30s")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink("perfpilot").type(dm.DashboardLinkType.DASHBOARDS)
                  .tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True)))


def encode(dashboard: db.Dashboard) -> str:
    """Stable JSON (sorted keys, two-space indent, final newline): what is committed.

    The SDK writes the interval variable's auto/auto_min/auto_count on every variable; Grafana's
    published schema (@grafana/schema, tests/checks/test_dashboard_schema.py) has no such fields
    on the other kinds, so they are dropped there."""
    model = dashboard.build()
    for var in model.templating.list_val or []:
        if var.type_val != dm.VariableType.INTERVAL:
            var.auto = var.auto_min = var.auto_count = None
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True,
                      ensure_ascii=False) + "\n"
