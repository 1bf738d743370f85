"""perfpilot's Grafana dashboards as code (grafana-foundation-sdk), rendered into the chart.

    python -m dashboards          # write charts/perfpilot/dashboards/*.json   (make dashboards)
    python -m dashboards --check  # exit 1 when the committed JSON is stale    (make dashboards-check)

The JSON is committed so the chart needs no Python to install; the chart ships each file as a
ConfigMap labelled grafana_dashboard: "1" (templates/dashboards.yaml). Needs the `dev` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards import profiles, sidecars
from dashboards.common import encode

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "charts" / "perfpilot" / "dashboards"

# File name in charts/perfpilot/dashboards/ -> builder. The file name is also the ConfigMap key,
# which Grafana's sidecar uses as the file name on its side: keep the perfpilot- prefix.
DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "perfpilot-profiles.json": profiles.build,
    "perfpilot-sidecars.json": sidecars.build,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: encode(build()) for name, build in DASHBOARDS.items()}
