#!/usr/bin/env bash
# grpcurl, an independent gRPC peer (Go, not grpc-python), for the malformed-request tests.
# Built from the pinned Go module into the shared cache; idempotent (a matching stamp is reused).
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail

GRPCURL_VERSION=1.9.4
CACHE="${PERFPILOT_CACHE:-$HOME/.cache/perfpilot}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/stamps"

if [[ -x "$BIN/grpcurl" && "$(cat "$CACHE/stamps/grpcurl" 2>/dev/null)" == "v$GRPCURL_VERSION" ]]; then
  echo "$BIN/grpcurl"
  exit 0
fi
command -v go >/dev/null || { echo "ensure-grpcurl: go is not installed" >&2; exit 1; }
echo "[grpcurl] building v$GRPCURL_VERSION into $BIN (one time, ~1-2 min) ..." >&2
t0=$SECONDS
GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" GOMAXPROCS="${GOMAXPROCS:-2}" GOBIN="$BIN" \
  go install -trimpath -ldflags "-s -w -X main.version=v$GRPCURL_VERSION" \
  "github.com/fullstorydev/grpcurl/cmd/grpcurl@v$GRPCURL_VERSION" >&2
echo "v$GRPCURL_VERSION" > "$CACHE/stamps/grpcurl"
echo "[grpcurl] built in $((SECONDS - t0))s" >&2
echo "$BIN/grpcurl"
