#!/usr/bin/env bash
# `make demo`: the local cluster, the operator and real sidecars are up (make dev-up). This walks
# through what a user sees: the CRD, a profile and its injected pods, a rejected profile, a live
# reconfiguration without restarts, then an alert and the autoscaler driven by the app's latency.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(make -s cluster-env)"
PY=.venv/bin/python
METRICS_PORT=$((28080 + ${PERFPILOT_PORT_BASE:-0}))   # the dev operator's (e2e/harness/dev.py)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_until() {  # wait_until <seconds> <what> <command...>: poll until the command succeeds
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > end)); then echo "timed out after ${limit}s waiting for $what" >&2; return 1; fi
    sleep 0.5
  done
}
# field_is <namespace> <profile> <jsonpath> <expected>: evaluated afresh on every poll
field_is() { test "$(kubectl get pp "$2" -n "$1" -o "jsonpath=$3" 2>/dev/null)" = "$4"; }

step "kubectl get nodes (kwok nodes: pods get 127.x IPs; real-node: containerd + kubelet, tainted for opt-in pods)"
kubectl get nodes -o wide

step "kubectl explain perfprofile.spec.autoscaling (the CRD documents itself)"
kubectl explain perfprofile.spec.autoscaling | sed -n '1,24p'

step "apply examples/02-full (profile + Deployment) into namespace ai"
kubectl create namespace ai --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n ai -f examples/02-full/perfprofile.yaml
kubectl apply -n ai -f examples/02-full/deployment.yaml
wait_until 90 "both sidecars configured" \
  field_is ai agents '{.status.pods.configured}/{.status.conditions[?(@.type=="Ready")].status}' 2/True
kubectl get pp -n ai
kubectl get pods -n ai -o wide

step "the injected pod: a native sidecar with the profile's resources"
pod=$(kubectl get pods -n ai -l app=agent -o jsonpath='{.items[0].metadata.name}')
kubectl get pod -n ai "$pod" -o jsonpath='{range .spec.initContainers[*]}{.name}: restartPolicy={.restartPolicy} limits={.resources.limits}{"\n"}{end}'

step "a bad profile is rejected by the API server, naming the field"
if kubectl apply -n ai -f - <<'BAD' 2>&1; then echo "unexpectedly accepted"; exit 1; fi
apiVersion: perfpilot.io/v1alpha1
kind: PerfProfile
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: other}}
  autoscaling: {minReplicas: 5, maxReplicas: 2, metric: queue_depth, target: 50}
BAD

step "live reconfiguration: processWorkers 2 -> 3 reaches every sidecar, no pod restarts"
kubectl patch pp agents -n ai --type=merge -p '{"spec":{"pools":{"processWorkers":3}}}'
wait_until 60 "generation 2 on every sidecar" \
  field_is ai agents '{.status.observedGeneration}/{.status.conditions[?(@.type=="ConfigApplied")].status}' 2/True
kubectl get pp agents -n ai -o jsonpath='{.status.conditions[?(@.type=="ConfigApplied")].message}{"\n"}'
kubectl get pods -n ai -o custom-columns='POD:.metadata.name,RESTARTS:.status.containerStatuses[*].restartCount,IP:.status.podIP'

step "alerts and autoscaling on the app's own p99 (examples/04-latency into namespace latency)"
kubectl create namespace latency --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n latency -f examples/04-latency/perfprofile.yaml
kubectl apply -n latency -f examples/04-latency/deployment.yaml
wait_until 90 "the latency profile's sidecar configured" \
  field_is latency answers '{.status.pods.configured}/{.status.conditions[?(@.type=="Ready")].status}' 1/True
echo "-- the app answers slowly (200 ms per op) for 15 s:"
$PY -m e2e.harness.dev load --namespace latency --selector app=answers --latency 0.2 --seconds 15
kubectl get pp answers -n latency
kubectl get deploy answers -n latency
echo "-- the app answers fast (1 ms per op) for 15 s:"
$PY -m e2e.harness.dev load --namespace latency --selector app=answers --latency 0.001 --seconds 15
kubectl get pp answers -n latency
kubectl get deploy answers -n latency

step "kubectl describe pp answers -n latency (conditions and events explain themselves)"
kubectl describe pp answers -n latency | sed -n '/^Status:/,$p'

cat <<EOF2

Everything keeps running. Try it yourself:
  eval \$(make -s cluster-env)
  kubectl get pp -A                           # profiles, readiness, replicas, firing alerts
  curl -s 127.0.0.1:${METRICS_PORT}/metrics | grep perfpilot_operator_   # what the operator decided on
  .venv/bin/python -m e2e.harness.dev load --namespace latency --selector app=answers --latency 0.3 --seconds 30
  make cluster-down                           # stop the operator, sidecars and the cluster
EOF2
