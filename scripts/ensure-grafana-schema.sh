#!/usr/bin/env bash
# Grafana's published dashboard schema for tests/checks/test_dashboard_schema.py, installed once per
# version (idempotent): npm's @grafana/schema (the TypeScript types Grafana's frontend is built on)
# turned into JSON Schema by ts-json-schema-generator, under $PERFPILOT_CACHE/grafana-schema/.
set -euo pipefail
cd "$(dirname "$0")/.."
# 11.6: the Grafana version grafana-foundation-sdk (pyproject.toml) builds the dashboards for.
SCHEMA=11.6.16
GENERATOR=2.9.0
CACHE="${PERFPILOT_CACHE:-$HOME/.cache/perfpilot}"
DIR="$CACHE/grafana-schema/$SCHEMA"
[[ -f "$DIR/json/.complete" ]] && exit 0
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "[grafana-schema] node/npm not found: install Debian's nodejs and npm packages;" \
       "the dashboard schema test skips until then" >&2
  exit 1
fi
echo "[grafana-schema] installing @grafana/schema@$SCHEMA and ts-json-schema-generator@$GENERATOR (npm, once)"
mkdir -p "$DIR"
LOG="$DIR/install.log"
if ! npm install --prefix "$DIR" --no-audit --no-fund --save-exact \
      "@grafana/schema@$SCHEMA" "ts-json-schema-generator@$GENERATOR" >"$LOG" 2>&1; then
  echo "[grafana-schema] npm install failed; see $LOG" >&2; tail -5 "$LOG" >&2; exit 1
fi
rm -rf "$DIR/json"
node scripts/grafana-schema.cjs "$DIR" "$DIR/json"
echo "@grafana/schema@$SCHEMA" > "$DIR/json/.complete"
