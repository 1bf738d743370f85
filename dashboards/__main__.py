"""Write or check charts/perfpilot/dashboards/*.json (see the package docstring)."""

from __future__ import annotations

import argparse
import difflib
import sys

from dashboards import OUT_DIR, ROOT, render


def stale(fresh: dict[str, str]) -> list[str]:
    """Files that differ from the generator's output, are missing, or are left over."""
    current = {p.name: p.read_text() for p in OUT_DIR.glob("*.json")}
    return sorted(n for n in set(fresh) | set(current) if fresh.get(n) != current.get(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards",
                                     description="perfpilot's Grafana dashboards as code")
    parser.add_argument("--check", action="store_true",
                        help="fail when the committed JSON differs from the generator")
    args = parser.parse_args(argv)
    fresh = render()
    rel = OUT_DIR.relative_to(ROOT) if OUT_DIR.is_relative_to(ROOT) else OUT_DIR
    if args.check:
        bad = stale(fresh)
        if not bad:
            print(f"dashboards: {len(fresh)} dashboards in {rel} are up to date")
            return 0
        for name in bad:
            print(f"dashboards: stale: {rel}/{name}", file=sys.stderr)
            path = OUT_DIR / name
            old = path.read_text().splitlines() if path.exists() else []
            diff = difflib.unified_diff(old, fresh.get(name, "").splitlines(),
                                        f"committed/{name}", f"generated/{name}", lineterm="", n=1)
            for line in list(diff)[:40]:
                print(line, file=sys.stderr)
        print("dashboards: run `make dashboards` and commit the result", file=sys.stderr)
        return 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in fresh.items():
        path = OUT_DIR / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"dashboards: wrote {rel}/{name}")
    for path in OUT_DIR.glob("*.json"):
        if path.name not in fresh:
            path.unlink()
            print(f"dashboards: removed {rel}/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
