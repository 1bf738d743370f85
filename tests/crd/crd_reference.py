"""Render the field tables of docs/crd-reference.md from crds/perfprofile.yaml.

    python tests/crd/crd_reference.py          # rewrite the generated part of the doc
    python tests/crd/crd_reference.py --check  # exit 1 when the doc is stale (also a unit test)

Only the text between the GENERATED markers is replaced; the rest of the doc is written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crd_schema_walk import ROOT, Schema, load_crd, version_schema  # noqa: E402

DOC = ROOT / "docs" / "crd-reference.md"
BEGIN = "<!-- BEGIN GENERATED FIELDS: python tests/crd/crd_reference.py -->"
END = "<!-- END GENERATED FIELDS -->"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$"
SECTIONS = ["selector", "target", "resources", "heartbeat", "pools", "cache", "kernels", "alerts",
            "autoscaling"]


def _type(s: Schema) -> str:
    if s.get("x-kubernetes-int-or-string"):
        return "quantity (int or string)"
    t = s.get("type", "")
    if t == "array":
        return f"[]{_type(s['items'])}"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return f"map[string]{_type(s['additionalProperties'])}"
    if t == "string" and s.get("pattern") == DURATION_PATTERN:
        return "duration (string)"
    if t == "string" and s.get("format") == "date-time":
        return "time (RFC 3339)"
    return t


def _num(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _bounds(s: Schema) -> str:
    out = []
    if "enum" in s:
        out.append("one of " + ", ".join(f"`{v}`" for v in s["enum"]))
    if "minimum" in s:
        out.append((">" if s.get("exclusiveMinimum") else "≥") + " " + _num(s["minimum"]))
    if "maximum" in s:
        out.append(("<" if s.get("exclusiveMaximum") else "≤") + " " + _num(s["maximum"]))
    if s.get("pattern") and s["pattern"] != DURATION_PATTERN:
        out.append(f"pattern `{s['pattern']}`")
    if "minLength" in s and s["minLength"] > 0:
        out.append(f"length ≥ {s['minLength']}")
    if "maxLength" in s and s.get("pattern") != DURATION_PATTERN:
        out.append(f"length ≤ {s['maxLength']}")
    if "maxItems" in s:
        out.append(f"≤ {s['maxItems']} items")
    if "maxProperties" in s:
        out.append(f"≤ {s['maxProperties']} entries")
    lt = s.get("x-kubernetes-list-type")
    if lt == "set":
        out.append("items unique")
    if lt == "map":
        out.append(f"unique by {', '.join(s['x-kubernetes-list-map-keys'])}")
    return "; ".join(out)


def _default(s: Schema) -> str:
    if "default" not in s:
        return ""
    d = s["default"]
    if d == {}:
        return "`{}` (filled by the nested defaults)"
    return f"`{json.dumps(d, separators=(', ', ': ')) if not isinstance(d, str) else d}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(s: Schema, path: str, required: bool, out: list[str]) -> None:
    req = " **(required)**" if required else ""
    out.append(f"| `{path}`{req} | {_cell(_type(s))} | {_cell(_default(s))} | "
               f"{_cell(_bounds(s))} | {_cell(s.get('description', ''))} |")
    for rule in s.get("x-kubernetes-validations", []):
        msg = rule.get("message") or f"(expression) `{rule['messageExpression']}`"
        at = f" at `{path}{rule['fieldPath']}`" if rule.get("fieldPath") else ""
        out.append(f"| ↳ rule{at} | CEL | | `{_cell(rule['rule'])}` | {_cell(msg)} |")
    req_set = set(s.get("required", []))
    for name, sub in (s.get("properties") or {}).items():
        _rows(sub, f"{path}.{name}", name in req_set, out)
    items = s.get("items")
    if isinstance(items, dict) and items.get("type") == "object":
        for rule in items.get("x-kubernetes-validations", []):
            msg = rule.get("message") or f"(expression) `{rule['messageExpression']}`"
            at = f" at `{path}[]{rule['fieldPath']}`" if rule.get("fieldPath") else ""
            out.append(f"| ↳ rule (each item){at} | CEL | | `{_cell(rule['rule'])}` | "
                       f"{_cell(msg)} |")
        item_req = set(items.get("required", []))
        for name, sub in (items.get("properties") or {}).items():
            _rows(sub, f"{path}[].{name}", name in item_req, out)


HEADER = ["| Field | Type | Default | Bounds | Description / message |",
          "|---|---|---|---|---|"]


def render() -> str:
    schema = version_schema(load_crd())
    spec = schema["properties"]["spec"]
    out: list[str] = [BEGIN, "", "### spec", "", *HEADER]
    for rule in spec.get("x-kubernetes-validations", []):
        at = f" at `spec{rule['fieldPath']}`" if rule.get("fieldPath") else ""
        out.append(f"| ↳ rule{at} | CEL | | `{_cell(rule['rule'])}` | "
                   f"{_cell(rule.get('message', ''))} |")
    assert list(spec["properties"]) == SECTIONS, list(spec["properties"])
    for name in SECTIONS:
        out += ["", f"### spec.{name}", "", *HEADER]
        _rows(spec["properties"][name], f"spec.{name}", name in spec["required"], out)
    out += ["", "### status", "", *HEADER]
    status = schema["properties"]["status"]
    for name, sub in status["properties"].items():
        _rows(sub, f"status.{name}", False, out)
    out += ["", END]
    return "\n".join(out)


def splice(doc: str, generated: str) -> str:
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + generated + tail


def main(argv: list[str]) -> int:
    current = DOC.read_text(encoding="utf-8")
    wanted = splice(current, render())
    if "--check" in argv:
        if wanted != current:
            print(f"{DOC} is stale: run python tests/crd/crd_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
