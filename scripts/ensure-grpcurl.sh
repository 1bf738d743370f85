#!/usr/bin/env bash
# grpcurl, an independent gRPC peer (Go, not grpc-python), for the malformed-request tests.
# Built by scripts/ensure-peers.sh (the one place its version is pinned); idempotent.
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/ensure-peers.sh" grpcurl
echo "${PERFPILOT_CACHE:-$HOME/.cache/perfpilot}/bin/grpcurl"
