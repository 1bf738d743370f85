# perfpilot — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
CACHE     ?= $(HOME)/.cache/perfpilot
STATE     := e2e/.state
export PERFPILOT_CACHE := $(CACHE)

.PHONY: help venv debs protos protos-check dashboards dashboards-check unit e2e test demo dev-up dev-down cluster-build cluster-up cluster-env cluster-down bench bench-quick bench-operator images clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The venv is rebuilt only when pyproject.toml changes; pip's wheel cache makes a rebuild cheap.
$(VENV)/.stamp: pyproject.toml
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

unit: venv ## unit and component tests (no cluster)
	@$(PY) -m pytest tests -q

cluster-build: ## build the pinned control-plane binaries into $(CACHE)/bin (cached)
	@bash e2e/build-control-plane.sh

cluster-up: venv cluster-build ## start etcd, kube-apiserver, controller-manager, scheduler and kwok on loopback
	@$(PY) -m e2e.harness.cluster up

cluster-env: ## print shell exports for the local cluster: eval $$(make -s cluster-env)
	@echo "export KUBECONFIG=$(CURDIR)/$(STATE)/kubeconfig"
	@echo "export PATH=$(CACHE)/bin:\$$PATH"

cluster-down: ## stop the operator, pod runner and local cluster, leaving no process behind
	@if [ -x $(PY) ]; then $(PY) -m e2e.harness.dev down && $(PY) -m e2e.harness.cluster down; \
	else echo "no venv, nothing to stop"; fi

dev-up: cluster-up ## cluster + CRD + the operator and the pod runner (real sidecars) in the background
	@$(PY) -m e2e.harness.dev up

dev-down: ## stop the operator and the pod runner (the cluster keeps running)
	@if [ -x $(PY) ]; then $(PY) -m e2e.harness.dev down; fi

images: venv ## sidecar, operator and example-app images, no Docker/registry (cached by content; ~5 min cold)
	@$(PY) -m e2e.harness.images

debs: ## Debian packages the e2e suite uses (prometheus), installed once
	@bash scripts/ensure-debs.sh

e2e: venv cluster-build debs ## end-to-end tests on the real local control plane
	@$(PY) -m pytest e2e -q -p no:cacheprovider

test: venv cluster-build debs images ## unit + e2e
	@$(PY) -m pytest tests e2e -q

demo: dev-up ## local cluster + operator + example profiles: injection, live config, alerts, autoscaling
	@bash scripts/demo.sh

bench: venv cluster-build ## full benchmarks, operator figures included -> bench/results/latest.json
	@$(PY) -m bench.run --full

bench-quick: venv ## quick benchmarks (< 3 min) -> bench/results/latest.json
	@$(PY) -m bench.run --quick

bench-operator: venv cluster-build ## operator figures only (~3 min; not with `make e2e`) -> bench/results/operator.json
	@$(PY) -m bench.operator_bench

clean: cluster-down
	rm -rf $(VENV) $(STATE)
