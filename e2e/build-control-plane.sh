#!/usr/bin/env bash
# Build the pinned control-plane binaries from Go modules into a cache outside the checkout.
# Idempotent: a binary whose stamp matches the pinned version is reused.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PERFPILOT_CACHE:-$HOME/.cache/perfpilot}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/stamps"

K8S_VERSION=1.35.4
K8S_MINOR=35
ETCD_VERSION=3.6.16
KWOK_VERSION=0.7.0
HELM_VERSION=3.19.5

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# Two cores: keep the linker's memory and the machine's responsiveness sane.
export GOMAXPROCS="${GOMAXPROCS:-2}"

log() { printf '[control-plane build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

fresh() { # fresh NAME VERSION -> 0 when a built binary with that stamp exists
  [[ -x "$BIN/$1" && -f "$CACHE/stamps/$1" && "$(cat "$CACHE/stamps/$1")" == "$2" ]]
}
stamp() { echo "$2" > "$CACHE/stamps/$1"; }

build_step() { # build_step LABEL CMD... ; shows elapsed time
  local label="$1"; shift
  local t0=$SECONDS
  log "building $label ..."
  # `go build -v` names each package as it compiles: show a count every 100 packages and
  # pass through everything else (downloads, errors) as is.
  "$@" 2>&1 | awk -v label="$label" '
    /^[^ :]+$/ { n++; if (n % 100 == 0) { printf "    ... %d packages compiled (now: %s)\n", n, $0; fflush() } ; next }
    { print "    " $0; fflush() }
    END { if (n) printf "    ... %d packages compiled\n", n }'
  # A failed build must not be stamped (the caller's `&&` switches errexit off in here).
  local rc=${PIPESTATUS[0]}
  if (( rc != 0 )); then log "FAILED building $label (exit $rc) after $((SECONDS - t0))s"; return "$rc"; fi
  log "built $label in $((SECONDS - t0))s"
}

k8s_ldflags() { # the version stamps `kubectl version` and the API server report
  local ldf="-s -w" kv
  for kv in gitVersion=v$K8S_VERSION gitMajor=1 gitMinor=$K8S_MINOR gitTreeState=clean buildDate=2025-01-01T00:00:00Z; do
    ldf="$ldf -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  echo "$ldf"
}

T0=$SECONDS
ALL_FRESH=1

K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
need_k8s=0
for b in "${K8S_BINS[@]}"; do fresh "$b" "v$K8S_VERSION" || need_k8s=1; done
if (( need_k8s )); then
  ALL_FRESH=0
  LDF="$(k8s_ldflags)"
  (cd "$HERE/gobuild/k8sbin" && build_step "kubernetes v$K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl; cold: 5-6 min on 2 cores; 8-11 min for everything, downloads included)" \
    go build -v -trimpath -ldflags "$LDF" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  for b in "${K8S_BINS[@]}"; do stamp "$b" "v$K8S_VERSION"; done
fi

# The kubelet of the real node (e2e/harness/node.py): same module, same flags, its own stamp so
# adding it never rebuilds the binaries above. Static (CGO_ENABLED=0) like the release builds.
if ! fresh kubelet "v$K8S_VERSION"; then
  ALL_FRESH=0
  (cd "$HERE/gobuild/k8sbin" && build_step "kubelet v$K8S_VERSION (after the control plane: ~1.5 min on 2 cores; alone with a cold Go cache: ~8.5 min)" \
    go build -v -trimpath -ldflags "$(k8s_ldflags)" -o "$BIN/kubelet" k8s.io/kubernetes/cmd/kubelet)
  stamp kubelet "v$K8S_VERSION"
fi

if ! fresh etcd "v$ETCD_VERSION"; then
  ALL_FRESH=0
  (cd "$HERE/gobuild/etcdbin" && build_step "etcd v$ETCD_VERSION" \
    go build -v -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "v$ETCD_VERSION"
fi

if ! fresh kwok "v$KWOK_VERSION"; then
  ALL_FRESH=0
  build_step "kwok v$KWOK_VERSION" env GOBIN="$BIN" go install -v -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  stamp kwok "v$KWOK_VERSION"
fi

# kwok's own default pod stages (the "fast" set), kept beside the binary: the harness extends
# the pod-ready stage to report container resources the way a resize-capable kubelet does.
STAGES="$CACHE/kwok-stages/v$KWOK_VERSION"
if [[ ! -s "$STAGES/pod-ready.yaml" ]]; then
  ALL_FRESH=0
  dir=$(go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  mkdir -p "$STAGES"
  cp "$dir"/kustomize/stage/pod/fast/pod-{ready,complete,delete}.yaml "$STAGES/"
  chmod u+w "$STAGES"/*.yaml
  log "kwok v$KWOK_VERSION pod stages copied to $STAGES"
fi

if ! fresh helm "v$HELM_VERSION"; then
  ALL_FRESH=0
  build_step "helm v$HELM_VERSION" env GOBIN="$BIN" go install -v -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  stamp helm "v$HELM_VERSION"
fi

if (( ALL_FRESH )); then
  log "all binaries cached in $BIN (k8s v$K8S_VERSION with kubelet, etcd v$ETCD_VERSION, kwok v$KWOK_VERSION, helm v$HELM_VERSION)"
else
  log "control plane built in $((SECONDS - T0))s into $BIN"
fi
