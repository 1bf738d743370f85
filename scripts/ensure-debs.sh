#!/usr/bin/env bash
# Debian packages the e2e suite uses, installed once (idempotent; a no-op when present):
#   prometheus                   - a real Prometheus scraping the operator and evaluating its PrometheusRule.
#   containerd, runc             - the real node's container runtime (e2e/harness/node.py starts its own
#                                  containerd; the packaged service is not used).
#   containernetworking-plugins  - CNI bridge/host-local/loopback for the real node's pod network.
#   iptables                     - the CNI bridge plugin's dependency for its (unused) masquerade chains.
#   busybox-static               - the e2e test image's only binary (e2e/harness/node_images.py).
#   gcc, libc6-dev               - compile Kubernetes' pause.c into the node's sandbox image.
#   redis-server                 - the shared cache tier's real Redis (tests/sidecar/redis_server.py starts
#                                  its own on loopback, no persistence; the packaged service is not used).
set -euo pipefail
need=()
have_pkg() { dpkg -s "$1" >/dev/null 2>&1; }
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
for pkg in containerd runc containernetworking-plugins iptables busybox-static gcc libc6-dev redis-server; do
  have_pkg "$pkg" || need+=("$pkg")
done
((${#need[@]})) || exit 0
echo "[debs] installing ${need[*]} (Debian packages; once per machine)"
t0=$SECONDS
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Another apt (a parallel checkout, unattended upgrades) may hold the lock: wait for it, do not fail.
APT=(apt-get -o DPkg::Lock::Timeout=600)
if ! $SUDO "${APT[@]}" install -y --no-install-recommends "${need[@]}" >/tmp/perfpilot-apt.log 2>&1; then
  $SUDO "${APT[@]}" update >>/tmp/perfpilot-apt.log 2>&1
  $SUDO "${APT[@]}" install -y --no-install-recommends "${need[@]}" >>/tmp/perfpilot-apt.log 2>&1 || {
    echo "[debs] apt-get failed; see /tmp/perfpilot-apt.log" >&2; tail -20 /tmp/perfpilot-apt.log >&2; exit 1; }
fi
# The packages just installed enable system services; the tests run their own instances
# (loopback, own socket). A service that was there before (say Docker's containerd) is left alone.
for svc in prometheus containerd redis-server; do
  [[ " ${need[*]} " == *" $svc "* ]] && { $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; }
done
echo "[debs] installed in $((SECONDS - t0))s: $(prometheus --version 2>&1 | head -1); $(containerd --version); $(runc --version | head -1); $(redis-server --version)"
