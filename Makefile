# The two commands that matter: `make demo` (a local cluster with a Ready ScaledApp) and
# `make test` (everything CI checks). Both install what they need on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CRD_FILE := crds/scaled.dev_scaledapps.yaml
CHART_CRD := charts/scaledapp-operator/crds/scaled.dev_scaledapps.yaml

.PHONY: help deps test fmt-check clippy unit e2e real-node-smoke script-tests crds crds-check chart-check stack stack-down bench bench-scale demo demo-down cluster-up cluster-down images images-check push node-images e2e-kind e2e-kind-down

help:
	@echo "make demo        local control plane + operator + examples/shop.yaml, shown until Ready (KIND=1: kind)"
	@echo "make demo-down   stop what make demo started"
	@echo "make test        fmt check, clippy -D warnings, generated-file checks, all tests"
	@echo "make crds        regenerate $(CRD_FILE) and docs/api.md from the Rust types"
	@echo "make crds-check  fail if $(CRD_FILE), the chart's copy or docs/api.md is stale"
	@echo "make chart-check helm lint and what the chart renders for the values users set"
	@echo "make e2e         the end-to-end suite on the local cluster (builds it on first use)"
	@echo "make real-node-smoke  real pods on the cluster's real node: probes, DNS, Services, volumes, NetworkPolicy, aggregation, no egress"
	@echo "make script-tests the scripts' own tests (a failing cluster start stops the callers, one line per build)"
	@echo "make stack       run the app locally on real Postgres (2 shards + replicas) and Redis"
	@echo "make bench-scale 100 ScaledApps at once: time to Ready, operator RSS, API requests"
	@echo "make images      operator + app images as OCI layouts under target/images (no Docker needed)"
	@echo "make images-check check the images and run them from their own root filesystem (root)"
	@echo "make push        push the two images (REGISTRY=host[:port]/path, default the local cluster's; TAG=...)"
	@echo "make node-images Postgres, Redis, pause and busybox images for the real node, from Debian packages"
	@echo "make e2e-kind    kind cluster, images, chart, e2e suite and real-pod checks (needs Docker)"

deps:
	@scripts/install-deps.sh

# The smoke test runs before the e2e suite: its egress guard counts every packet since up.sh,
# and the suite's real pods, torn down with their namespaces, try Service addresses that are
# already gone (dropped by the guard, but counted).
TEST_STAGES := fmt-check clippy crds-check chart-check script-tests unit images real-node-smoke e2e images-check
# Each stage is its own `make STAGE`; scripts/test-stages.sh times it, counts its passed, failed,
# ignored and skipped checks (scripts/lib/stage-counts.awk), and fails a real-pod stage that
# skipped or ignored a check without SCALEDAPP_REAL_NODE=0.
test: deps
	@scripts/test-stages.sh $(TEST_STAGES)

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The app's integration tests run Postgres through the scaled-instance binary: build it first
# (cargo test builds only the binaries of the package under test).
unit:
	$(CARGO) build -p scaled-instance
	$(CARGO) test --workspace --exclude scaled-e2e

e2e: deps images
	e2e/run.sh

# SCALEDAPP_REAL_NODE=0 skips it (and says so).
real-node-smoke: deps
	@if [ "$${SCALEDAPP_REAL_NODE:-1}" = 0 ]; then \
	  echo "SKIP real-node smoke test: SCALEDAPP_REAL_NODE=0 (kwok nodes only, no pod really runs)"; \
	else e2e/cluster/up.sh >/dev/null && e2e/cluster/real-node-smoke.sh; fi

script-tests:
	e2e/cluster/tests/run.sh

demo: deps
	scripts/demo.sh

demo-down:
	scripts/demo-down.sh

cluster-up:
	e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

crds:
	@mkdir -p crds
	$(CARGO) run -q -p scaledapp-operator -- crd > $(CRD_FILE)
	$(CARGO) run -q -p scaledapp-operator -- api-docs > docs/api.md
	@if [ -d charts/scaledapp-operator ]; then mkdir -p $(dir $(CHART_CRD)) && cp $(CRD_FILE) $(CHART_CRD); fi
	@echo "wrote $(CRD_FILE)"

chart-check: deps
	charts/check.sh

crds-check:
	@tmp=$$(mktemp); $(CARGO) run -q -p scaledapp-operator -- api-docs > $$tmp; \
	if ! diff -q docs/api.md $$tmp >/dev/null; then echo "docs/api.md is stale: run 'make crds' and commit it" >&2; rm -f $$tmp; exit 1; fi; \
	$(CARGO) run -q -p scaledapp-operator -- crd > $$tmp; \
	if ! diff -u $(CRD_FILE) $$tmp; then echo "$(CRD_FILE) is stale: run 'make crds' and commit it" >&2; rm -f $$tmp; exit 1; fi; \
	if [ -d charts/scaledapp-operator ] && ! diff -q $(CRD_FILE) $(CHART_CRD) >/dev/null; then \
	  echo "$(CHART_CRD) differs from $(CRD_FILE): run 'make crds' and commit it" >&2; rm -f $$tmp; exit 1; fi; \
	rm -f $$tmp; echo "crds: up to date"

stack: deps
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

bench: deps
	scripts/bench-app.sh

bench-scale: deps
	e2e/bench-scale.sh

images:
	scripts/build-images.sh

images-check: images
	scripts/check-images.sh

push:
	REGISTRY="$(REGISTRY)" TAG="$(TAG)" scripts/push-images.sh

node-images:
	images/debian/build.sh

e2e-kind:
	e2e/kind/up.sh
	e2e/kind/test.sh

e2e-kind-down:
	e2e/kind/down.sh
