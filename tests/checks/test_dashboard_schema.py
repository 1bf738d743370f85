"""The Grafana dashboards the chart ships, validated against Grafana's published schema.

The schema is npm's @grafana/schema (the TypeScript types of Grafana's dashboard model and of each
panel plugin's options), turned into JSON Schema once by `make grafana-schema`
(scripts/ensure-grafana-schema.sh; `make test` runs it). Objects are closed, as the TypeScript
types are: a misspelt or unknown field fails here instead of being ignored by Grafana. Checked: the
dashboard model, every panel (row or not), each panel's options and field-config defaults against
its plugin's types. Not checked: the queries (the package has no Prometheus query type).
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "charts" / "perfpilot" / "dashboards").glob("*.json"))
CACHE = Path(os.environ.get("PERFPILOT_CACHE", Path.home() / ".cache" / "perfpilot"))
SCHEMA_VERSION = "11.6.16"   # scripts/ensure-grafana-schema.sh
SCHEMAS = CACHE / "grafana-schema" / SCHEMA_VERSION / "json"

pytestmark = pytest.mark.skipif(
    not (SCHEMAS / ".complete").exists(),
    reason=f"Grafana's schema is not installed in {SCHEMAS}: `make grafana-schema` installs it "
           "with npm (`make test` does so first)")


@cache
def validator(name: str) -> jsonschema.Draft7Validator:
    path = SCHEMAS / f"{name}.json"
    assert path.exists(), f"no schema {path.name}: is this a panel type @grafana/schema types?"
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def problems(dashboard: dict[str, Any]) -> list[str]:
    """Every schema violation, as `<where>: <message>`."""
    found = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
             for e in validator("dashboard.Dashboard").iter_errors(dashboard)]
    for i, panel in enumerate(dashboard.get("panels", [])):
        where = f"panels/{i} ({panel.get('type')} {panel.get('title')!r})"
        kind = panel.get("type")
        checks: list[tuple[str, str, Any]] = [
            ("", "dashboard.RowPanel" if kind == "row" else "dashboard.Panel", panel)]
        if kind != "row":
            checks.append(("options", f"panelcfg.{kind}.Options", panel.get("options", {})))
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
            if custom is not None:
                checks.append(("fieldConfig/defaults/custom", f"panelcfg.{kind}.FieldConfig", custom))
        for sub, schema, value in checks:
            for e in validator(schema).iter_errors(value):
                path = "/".join(p for p in (sub, *map(str, e.absolute_path)) if p)
                found.append(f"{where} {path}: {e.message}")
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_matches_grafanas_schema(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["panels"], "a dashboard without panels"
    found = problems(dashboard)
    assert not found, f"{path.name} does not match @grafana/schema {SCHEMA_VERSION}:\n" + \
        "\n".join(found[:30])


def test_the_schema_refuses_what_grafana_would_ignore() -> None:
    """The check can fail: a misspelt option, an unknown panel field, a wrong enum value."""
    good = json.loads(DASHBOARDS[0].read_text())
    assert problems(good) == []
    i = next(i for i, p in enumerate(good["panels"]) if p["type"] == "timeseries")
    cases = {   # (where the problem is reported, what names it): the change
        ("options:", "'lengend'"): lambda d: d["panels"][i]["options"].update(lengend={}),
        (") :", "'colour'"): lambda d: d["panels"][i].update(colour="red"),
        ("options/legend/displayMode:", "'sideways'"):
            lambda d: d["panels"][i]["options"]["legend"].update(displayMode="sideways"),
        ("fieldConfig/defaults/custom/drawStyle:", "'dots'"):
            lambda d: d["panels"][i]["fieldConfig"]["defaults"]["custom"].update(drawStyle="dots"),
        ("/graphTooltip:", "7 is not one of"): lambda d: d.update(graphTooltip=7),
    }
    for (where, what), mutate in cases.items():
        bad = copy.deepcopy(good)
        mutate(bad)
        found = problems(bad)
        assert any(where in p and what in p for p in found), (where, what, found)
