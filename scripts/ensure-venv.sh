#!/usr/bin/env bash
# Create the project's virtual environment and install perfpilot[dev] (editable). Idempotent.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[venv] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip==26.3 >/dev/null
echo "[venv] installing perfpilot[dev] (pinned; cached wheels are reused)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "[venv] ready: $("$VENV/bin/python" --version)"
