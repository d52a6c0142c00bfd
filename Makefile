# scalable-api-operator: run `make help` for the list of targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

export PATH := $(CURDIR)/.tools/bin:$(PATH)
CARGO ?= cargo
# The workspace version (Cargo.toml [workspace.package]), the default image tag.
VERSION = $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)

##@ General
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development
.PHONY: deps
deps: ## Install what the tests need when missing (PostgreSQL, Redis, the Kafka broker, shellcheck, helm, kubectl, kubernetes-validate, cargo-nextest)
	scripts/ensure-deps.sh services kafka lint k8s rust cluster

.PHONY: render
render: ## Print the Kubernetes objects one ScalableApi becomes, without a cluster (FILE=examples/production.yaml)
	$(CARGO) run --quiet --locked -p scalable-api-operator -- render -f $(or $(FILE),examples/production.yaml)

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

##@ Test
.PHONY: test
test: deps lint test-rust test-contract check-manifests test-e2e ## Run every test that can run without Docker (installs PostgreSQL/Redis/helm, builds the control plane and the images when missing; the e2e part needs root)

.PHONY: test-e2e
test-e2e: ## The images (podman) and their lock-down test, then the e2e suite on a real node of this machine (kubelet, containerd, CNI; needs root)
	scripts/images.sh build
	scripts/images.sh test
	SKIP_BUILD=true E2E_CLUSTER=real e2e/scripts/run.sh

.PHONY: test-contract
test-contract: ## schemathesis (PyPI) against a live api-server and its /openapi.json, open and with JWT authentication
	scripts/contract-test.sh

.PHONY: test-rust
test-rust: ## Unit, API (real PostgreSQL + Redis) and controller (real control plane) tests
	scripts/with-cluster.sh $(CARGO) nextest run --workspace --all-targets --locked --no-fail-fast
	$(CARGO) test --workspace --doc --locked

##@ Test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, metrics-server)
.PHONY: testenv cluster-up cluster-down
testenv: ## Build the control plane's programs from testenv/ into ~/.cache/scalable-api-operator (only what is missing)
	scripts/testenv-build.sh

cluster-up: ## Start the control plane on 127.0.0.1 (state in .cluster); then: eval "$$(scripts/cluster.sh env)"
	scripts/cluster.sh up

cluster-down: ## Stop the control plane started by cluster-up and remove its state
	scripts/cluster.sh down

##@ Run and benchmark
.PHONY: run-api bench-api bench-limits bench-operator bench-events bench-driver
run-api: ## Run api-server on :8080 (PORT=...) against a throwaway local PostgreSQL + Redis, installed and started as needed
	scripts/run-api.sh

bench-api: ## Load-test a release build with wrk (64 connections): healthz, cached GET, POST, list; prints req/s, p50, p99, RSS
	scripts/bench-api.sh

bench-events: ## POST /users with user events off, then on (a local Kafka broker): req/s and the publish lag p50/p99
	scripts/bench-events.sh

bench-operator: ## COUNT (default 1000) ScalableApis on a fresh real control plane: time to Ready, peak RSS, API requests by verb, idle cost
	$(CARGO) build --release --locked -p scalable-api-operator --bin scalable-api-operator --example cluster_scale
	scripts/with-cluster.sh target/release/examples/cluster_scale \
	  --operator target/release/scalable-api-operator --count $(or $(COUNT),1000)

bench-limits: ## Ceilings of the backing services on this machine (redis-benchmark, pgbench, pg_test_fsync)
	scripts/bench-limits.sh

bench-driver: ## Postgres drivers on the api-server's INSERT and point read, interleaved in one run: sqlx 0.8 as configured vs tokio-postgres + deadpool/bb8; ops/s, p50/p99, client and Postgres CPU per op (ARGS=--help)
	scripts/ensure-deps.sh services
	$(CARGO) build --release --locked -p api-server --example pg_driver_compare
	export DEV_SERVICES_DIR="$(CURDIR)/.tools/bench-driver"; \
	trap 'scripts/dev-services.sh clean' EXIT; \
	scripts/dev-services.sh start; \
	eval "$$(scripts/dev-services.sh env)"; \
	"$${CARGO_TARGET_DIR:-target}/release/examples/pg_driver_compare" \
	  --postmaster-pid-file "$$DEV_SERVICES_DIR/pg/postmaster.pid" $(ARGS)

##@ Packaging
.PHONY: generate chart-docs check-manifests lint-helm docker-build kind-load e2e
generate: ## Regenerate crds/ from the CRD types and copy the CRD into the Helm chart
	$(CARGO) run --quiet --locked -p scalable-api-operator -- crd > crds/scalableapis.scalable.dev.yaml.tmp
	mv crds/scalableapis.scalable.dev.yaml.tmp crds/scalableapis.scalable.dev.yaml
	scripts/generate-chart-crd.sh

chart-docs: ## Regenerate the chart README's values table from values.yaml (helm-docs, built when missing)
	scripts/helm-docs.sh

check-manifests: ## helm lint/template + Kubernetes schema validation, render every example, CRD drift, shellcheck, hadolint
	scripts/check-manifests.sh

lint-helm: ## helm lint --strict on the chart (default and full values)
	scripts/ensure-deps.sh k8s
	helm lint --strict charts/scalable-api-operator
	helm lint --strict charts/scalable-api-operator -f charts/scalable-api-operator/ci/full-values.yaml

docker-build: ## Build both container images (needs Docker; OPERATOR_IMAGE/API_IMAGE override the tags)
	scripts/docker-build.sh

.PHONY: images test-images
images: ## Build the operator, api-server, Redis and PostgreSQL images without Docker (podman, a debootstrap base, host-built binaries)
	scripts/images.sh build

test-images: ## Run each image locked down (non-root, read-only, no capabilities) and check it answers
	scripts/images.sh test

kind-load: ## Load both images into the kind cluster (KIND_CLUSTER_NAME, default scalable-e2e)
	e2e/scripts/setup-cluster.sh load \
	  $${OPERATOR_IMAGE:-ghcr.io/scalable-dev/scalable-api-operator:$(VERSION)} \
	  $${API_IMAGE:-ghcr.io/scalable-dev/api-server:$(VERSION)}

e2e: ## End-to-end suite: cluster, images, chart, dev Postgres, Rust e2e tests (kind where Docker and kind are, else the real node of scripts/cluster.sh, as root; PRESERVE_CLUSTER=true keeps it)
	e2e/scripts/run.sh
