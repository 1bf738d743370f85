#!/usr/bin/env bash
# Debian packages the e2e suite uses, installed once (idempotent; a no-op when present):
#   prometheus  - a real Prometheus scraping the operator and evaluating its PrometheusRule.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
((${#need[@]})) || exit 0
echo "[debs] installing ${need[*]} (Debian packages; once per machine)"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/tmp/perfpilot-apt.log 2>&1; then
  $SUDO apt-get update >>/tmp/perfpilot-apt.log 2>&1
  $SUDO apt-get install -y --no-install-recommends "${need[@]}" >>/tmp/perfpilot-apt.log 2>&1 || {
    echo "[debs] apt-get failed; see /tmp/perfpilot-apt.log" >&2; tail -20 /tmp/perfpilot-apt.log >&2; exit 1; }
fi
# The package enables a system service; the tests run their own instance on loopback.
$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
echo "[debs] $(prometheus --version 2>&1 | head -1)"
