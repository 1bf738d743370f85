# perfpilot — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
CACHE     ?= $(HOME)/.cache/perfpilot
STATE     := e2e/.state
export PERFPILOT_CACHE := $(CACHE)

.PHONY: help venv debs grafana-schema lint protos protos-check dashboards dashboards-check unit e2e e2e-cluster peers test demo dev-up dev-down cluster-build cluster-up cluster-env cluster-down bench bench-quick bench-operator bench-node bench-scale images clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The venv is rebuilt only when pyproject.toml changes or a top-level package is added (the
# editable install maps packages by name); pip's wheel cache makes a rebuild cheap.
$(VENV)/.stamp: pyproject.toml $(wildcard sidecar/*/__init__.py operator/*/__init__.py)
	@bash scripts/ensure-venv.sh $(VENV)
	@touch $@

venv: $(VENV)/.stamp ## create/refresh the Python virtual environment

protos: venv ## regenerate the gRPC stubs from protos/
	@$(PY) -m scripts.genprotos

protos-check: venv ## fail when the committed stubs differ from protos/
	@$(PY) -m scripts.genprotos --check

dashboards: venv ## regenerate charts/perfpilot/dashboards/*.json from dashboards/ (Grafana, as code)
	@$(PY) -m dashboards

dashboards-check: venv ## fail when the committed dashboard JSON differs from dashboards/
	@$(PY) -m dashboards --check

lint: venv ## ruff + mypy --strict (also part of `make test`, as tests/checks/test_lint.py)
	@$(PY) -m scripts.lint

unit: venv grafana-schema ## lint, unit and component tests (no cluster)
	@$(PY) -m pytest tests -q

cluster-build: ## build the pinned control-plane binaries and the kubelet into $(CACHE)/bin (cached)
	@bash e2e/build-control-plane.sh

cluster-up: venv cluster-build debs ## start etcd, kube-apiserver, controller-manager, scheduler, kwok and a real node (containerd + kubelet)
	@$(PY) -m e2e.harness.cluster up

cluster-env: ## print shell exports for the local cluster: eval $$(make -s cluster-env)
	@echo "export KUBECONFIG=$(CURDIR)/$(STATE)/kubeconfig"
	@echo "export PATH=$(CACHE)/bin:\$$PATH"

cluster-down: ## stop the operator, pod runner and local cluster (and the test suite's), leaving no process behind
	@if [ -x $(PY) ]; then $(PY) -m e2e.harness.dev down && $(PY) -m e2e.harness.cluster down \
	  && $(PY) -m e2e.harness.suite down; else echo "no venv, nothing to stop"; fi

dev-up: cluster-up ## cluster + CRD + the operator and the pod runner (real sidecars) in the background
	@$(PY) -m e2e.harness.dev up

dev-down: ## stop the operator and the pod runner (the cluster keeps running)
	@if [ -x $(PY) ]; then $(PY) -m e2e.harness.dev down; fi

images: venv ## sidecar, operator and example-app images, no Docker/registry (cached by content; ~5 min cold)
	@$(PY) -m e2e.harness.images

debs: ## Debian packages the cluster and e2e suite use (containerd, runc, CNI, prometheus...), installed once
	@bash scripts/ensure-debs.sh

grafana-schema: ## Grafana's published dashboard schema (npm @grafana/schema) for the dashboard test, once
	@bash scripts/ensure-grafana-schema.sh || echo "[grafana-schema] not installed: tests/checks/test_dashboard_schema.py will skip, naming why"

peers: ## independent peers for tests/peers/ (grpc-health-probe, grpcurl, kubeconform, kube-score, checkov), pinned, built once
	@bash scripts/ensure-peers.sh

e2e: venv cluster-build debs ## end-to-end tests on the real local control plane
	@$(PY) -m pytest e2e -q -p no:cacheprovider

# Any cluster (kind, ...): nothing is started; load the images first (README, "e2e on kind").
e2e-cluster: venv ## end-to-end tests against the cluster in KUBECONFIG (local-harness scenarios skip)
	@test -n "$$KUBECONFIG" || { echo "e2e-cluster: set KUBECONFIG to the cluster to test (kind get kubeconfig > kc; KUBECONFIG=$$PWD/kc)"; exit 2; }
	@PERFPILOT_E2E_EXTERNAL=1 $(PY) -m pytest e2e -q -p no:cacheprovider -rs

test: venv cluster-build debs grafana-schema images peers ## lint + unit + e2e
	@$(PY) -m pytest tests e2e -q

demo: dev-up ## local cluster + operator + example profiles: injection, live config, alerts, autoscaling
	@bash scripts/demo.sh

bench: venv cluster-build debs ## full benchmarks, operator and real-node figures included -> bench/results/latest.json
	@$(PY) -m bench.run --full

bench-quick: venv ## quick benchmarks (< 3 min) -> bench/results/latest.json
	@$(PY) -m bench.run --quick

bench-operator: venv cluster-build debs ## operator figures only (~3 min; not with `make e2e`) -> bench/results/operator.json
	@$(PY) -m bench.operator_bench

bench-scale: venv cluster-build debs ## 100 profiles x 10 injected pods + 10,000 other pods (~15 min; own cluster when none runs) -> bench/results/scale.json
	@$(PY) -m bench.scale_bench

bench-node: venv cluster-build debs ## real-node figures only (~5 min; own cluster) -> bench/results/node.json
	@$(PY) -m bench.node_bench

clean: cluster-down
	rm -rf $(VENV) $(STATE) e2e/.state-test
