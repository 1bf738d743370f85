"""Render the live-config table of limits and defaults from perfpilot_contract into the docs.

    python tests/contract/contract_table.py          # rewrite the generated parts of the docs
    python tests/contract/contract_table.py --check  # exit 1 when a doc is stale (also a unit test)

Only the text between the GENERATED markers is replaced, in docs/crd-reference.md and
docs/sidecar.md; the rest is written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from perfpilot_contract import limits as L
from perfpilot_contract.durations import format_ns

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "crd-reference.md", ROOT / "docs" / "sidecar.md")
BEGIN = "<!-- BEGIN GENERATED LIMITS: python tests/contract/contract_table.py -->"
END = "<!-- END GENERATED LIMITS -->"


def _value(limit: L.Limit, v: int | bool | tuple[str, ...]) -> str:
    if limit.kind == "duration":
        assert isinstance(v, int)
        return format_ns(v)
    if limit.kind == "bool":
        return "true" if v else "false"
    if isinstance(v, tuple):
        return str(list(v))
    return str(v)


def render() -> str:
    rows = [
        "| field (`spec.`…) | type | min | max | default | notes |",
        "|---|---|---|---|---|---|",
    ]
    for limit in L.LIMITS:
        if limit.kind == "kernels":
            lo, hi, typ = "0 names", f"{limit.hi} names", "[]kernel name"
        elif limit.kind == "bool":
            lo, hi, typ = "", "", "boolean"
        else:
            lo, hi = _value(limit, limit.lo), _value(limit, limit.hi)
            typ = "duration" if limit.kind == "duration" else "integer"
        default = _value(limit, limit.default)
        if not limit.schema_default:
            default += " (effective)"
        rows.append(f"| `{limit.path}` | {typ} | {lo} | {hi} | {default} | {limit.note} |")
    for text in L.TEXTS:
        rows.append(f"| `{text.path}` | string |  | {text.max_length} chars |  | {text.note} |")
    rows.append("")
    rows.append(f"Known kernels: {', '.join(f'`{k}`' for k in L.KERNEL_NAMES)}. "
                f"`CachePut.ttl` follows `cache.ttl`'s bounds (0s: the value is not stored).")
    return "\n".join(rows) + "\n"


def splice(doc: str, table: str) -> str:
    head, sep, rest = doc.partition(BEGIN)
    if not sep:
        raise SystemExit(f"marker {BEGIN!r} missing")
    _, sep2, tail = rest.partition(END)
    if not sep2:
        raise SystemExit(f"marker {END!r} missing")
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main(argv: list[str]) -> int:
    table = render()
    stale = []
    for doc in DOCS:
        current = doc.read_text(encoding="utf-8")
        fresh = splice(current, table)
        if fresh != current:
            if "--check" in argv:
                stale.append(doc)
            else:
                doc.write_text(fresh, encoding="utf-8")
                print(f"wrote {doc.relative_to(ROOT)}")
    for doc in stale:
        print(f"{doc.relative_to(ROOT)} is stale: run python tests/contract/contract_table.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
