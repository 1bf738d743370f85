#!/usr/bin/env bash
# `make demo`: the local cluster (already up via make), the PerfProfile CRD, an example profile
# with its Deployment, and what a person checks first.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(make -s cluster-env)"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "kubectl get nodes (kwok nodes, pods get 127.x IPs)"
kubectl get nodes -o wide

step "install the PerfProfile CRD"
kubectl apply --server-side --force-conflicts -f crds/perfprofile.yaml
kubectl wait --for=condition=Established --timeout=60s crd/perfprofiles.perfpilot.io

step "kubectl explain perfprofile.spec.autoscaling"
kubectl explain perfprofile.spec.autoscaling | head -40

step "apply examples/02-full (profile + Deployment) into namespace ai"
kubectl create namespace ai --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n ai -f examples/02-full/
kubectl rollout status -n ai deploy/agent --timeout=60s || true

step "a bad profile is rejected by the API server, naming the field"
if kubectl apply -n ai -f - <<'BAD' 2>&1; then echo "unexpectedly accepted"; exit 1; fi
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: agent}}
  autoscaling: {minReplicas: 5, maxReplicas: 2, metric: queue_depth, target: 50}
BAD

step "kubectl get perfprofiles -A"
kubectl get perfprofiles -A
step "kubectl get pods -n ai -o wide"
kubectl get pods -n ai -o wide

cat <<EOF2

The cluster keeps running. Try it yourself:
  eval \$(make -s cluster-env)
  kubectl get pp -A -o yaml        # the defaults the schema filled in
  make cluster-down                # stop everything
EOF2
