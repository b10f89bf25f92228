# Aeropartners — the user's entry points. `make run` starts the platform on this machine;
# `make test` runs every check CI runs. Both install and start what they need
# (PostgreSQL, Apache Pulsar, protoc) through scripts/infra.sh.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

INFRA_ENV := target/infra/env
# Loads DATABASE_URL / PULSAR_URL / PULSAR_ADMIN_URL written by `scripts/infra.sh up`.
WITH_INFRA = set -a && source $(INFRA_ENV) && set +a &&
# Puts the Kubernetes tools on PATH and points KUBECONFIG at the test API server.
WITH_K8S = export PATH="$$(scripts/k8s-tools.sh path):$$PATH" && export "$$(scripts/kube-apiserver.sh env)" &&

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z0-9 %-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

.PHONY: infra-up
infra-up: ## Install (if missing) and start PostgreSQL + Apache Pulsar, or use DATABASE_URL / PULSAR_URL
	@scripts/infra.sh up

.PHONY: k8s-up
k8s-up: ## Build (once) kube-apiserver, etcd, kubectl and helm, and start a test API server on loopback
	@scripts/k8s-tools.sh >/dev/null
	@scripts/kube-apiserver.sh up

.PHONY: k8s-down
k8s-down: ## Stop the test API server
	@scripts/kube-apiserver.sh down

.PHONY: infra-down
infra-down: ## Stop the PostgreSQL and Pulsar this project started
	@scripts/infra.sh down

.PHONY: build
# The same profile (dev, dependencies optimised: see Cargo.toml) and the same package selection
# as `make test`, so after `make test` this compiles nothing but what changed, and `make run`,
# `make bench` and the scenarios share that one build of the dependencies (`make test` checks
# it: build-shared-check).
BUILD := cargo build --locked --workspace --bins
BIN := target/debug
build: infra-up console ## Build the `aeropartners` binary, the benchmarks and the scenario runners
	$(BUILD)

.PHONY: console
console: ## Build the operations console (npm: vite, preact, uPlot) that the gateway embeds; a no-op when up to date
	@scripts/console.sh build

.PHONY: run
run: build ## Start the whole platform on this machine: gateway on :8000 (Ctrl-C stops it)
	@$(WITH_INFRA) scripts/run.sh $(BIN)/aeropartners

.PHONY: fmt-check
fmt-check:
	cargo fmt --all -- --check

.PHONY: lint
lint: infra-up console
	cargo clippy --locked --workspace --all-targets -- -D warnings

.PHONY: shellcheck
shellcheck: ## shellcheck every script (installed by scripts/infra.sh test-deps)
	@scripts/infra.sh test-deps
	shellcheck --external-sources scripts/*.sh .ci/run

.PHONY: build-shared-check
# Fails when `make build` would compile a dependency again after `make test`: a feature that
# only a test enables would make `make run` a second full compile (issue 7).
build-shared-check:
	@$(BUILD) --message-format=json-render-diagnostics \
		| grep '"reason":"compiler-artifact"' | grep '"fresh":false' \
		| grep -o '"package_id":"[^"]*"' | grep -v '"package_id":"path+file://' \
		> target/rebuilt-after-test.txt || true
	@if [ -s target/rebuilt-after-test.txt ]; then \
		echo "make build recompiles dependencies that make test already built:" >&2; \
		cat target/rebuilt-after-test.txt >&2; exit 1; fi
	@echo "build-shared-check: make build reuses every dependency make test compiled"

CRD := crds/reportversions.aeropartners.io.yaml
# The chart renders its CRDs from files/crds/ (templates/crds.yaml), so that they upgrade with it.
CHART_CRD := charts/aeropartners/files/crds/reportversions.aeropartners.io.yaml

.PHONY: crds
crds: ## Regenerate the ReportVersion CRD (crds/ and the chart's copy)
	cargo run --quiet --locked -p operator --bin crdgen > $(CRD)
	@if [ -d charts/aeropartners ]; then mkdir -p $(dir $(CHART_CRD)) && cp $(CRD) $(CHART_CRD); fi

.PHONY: crds-check
crds-check: ## Fail when a committed CRD differs from what the Rust types generate
	@cargo run --quiet --locked -p operator --bin crdgen | diff -u $(CRD) - \
		|| { echo "$(CRD) is stale: run 'make crds' and commit the result" >&2; exit 1; }
	@if [ -d charts/aeropartners ]; then cmp -s $(CRD) $(CHART_CRD) \
		|| { echo "$(CHART_CRD) differs from $(CRD): run 'make crds'" >&2; exit 1; }; fi

.PHONY: disk-check
# Measured on a fresh clone: target/ peaks at 5.2 GiB without incremental caches (CI sets
# CARGO_INCREMENTAL=0); with them it was 19 GiB, 11 of them the caches, when every test file
# was its own binary. A new machine adds about 6 GiB under ~/.cache (the Kubernetes and Pulsar
# builds and downloads). Say so before rustc dies half-way with "No space left on device".
# Only a warning: a warm run needs far less.
DISK_NEEDED_GIB := $(if $(filter 0,$(CARGO_INCREMENTAL)),12,22)
disk-check:
	@free_gib=$$(df -Pk . | awk 'NR == 2 { printf "%d", $$4 / 1048576 }'); \
	if [ "$$free_gib" -lt $(DISK_NEEDED_GIB) ]; then \
		echo "warning: $$free_gib GiB free on this disk; a cold make test needs about $(DISK_NEEDED_GIB) GiB." \
			"'cargo clean' frees target/, and CARGO_INCREMENTAL=0 builds without the incremental caches" >&2; fi

.PHONY: test
test: disk-check infra-up k8s-up console fmt-check shellcheck lint crds-check ## fmt, shellcheck, clippy, unit and integration tests against real PostgreSQL + Pulsar, the Postman collection, the console in a browser, schemathesis on every API, the short fault matrix, then make e2e
	@mkdir -p target
	@$(WITH_INFRA) $(WITH_K8S) cargo test --locked --workspace --no-fail-fast 2>&1 | tee target/test.log; \
	status=$${PIPESTATUS[0]}; \
	$(MAKE) --no-print-directory build-shared-check || status=1; \
	awk '/^test result:/ { passed += $$4; failed += $$6 } \
	     END { printf "\ntests: %d passed, %d failed\n", passed, failed }' target/test.log; \
	$(MAKE) --no-print-directory postman-test || { status=1; echo "postman: FAILED"; }; \
	$(MAKE) --no-print-directory console-test || { status=1; echo "console: FAILED"; }; \
	$(MAKE) --no-print-directory fuzz || { status=1; echo "fuzz: FAILED"; }; \
	$(MAKE) --no-print-directory faults-short || { status=1; echo "faults: FAILED"; }; \
	$(MAKE) --no-print-directory e2e || { status=1; echo "e2e: FAILED"; }; \
	exit $$status

.PHONY: e2e
e2e: build ## The README's kind path (make deploy, default values, helm test) on a real three-node cluster from binaries, then the smoke test, scenarios #2 and #9, Degraded, operator restart, helm upgrade and rollback
	@scripts/e2e.sh run

.PHONY: postman
postman: ## Run the Postman collection (newman) against the platform `make run` started (POSTMAN_ENV=kind for helm on kind)
	@curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8000/health || { \
		echo "nothing answers on http://127.0.0.1:8000: start the platform first (make run, or helm install on kind)"; exit 1; }
	@scripts/postman.sh run $(POSTMAN_ARGS)

.PHONY: postman-test
postman-test: build k8s-up ## The Postman collection, with partner keys and an operator's token, against a platform of its own that enforces access (fresh database, free ports); part of make test
	@$(WITH_INFRA) $(WITH_K8S) $(BIN)/postman --binary $(BIN)/aeropartners

.PHONY: console-test
console-test: build k8s-up ## The operations console in Debian's chromium (playwright-core), signed in with the test API server's tokens, against a platform of its own that enforces access; screenshots in target/console/; part of make test
	@$(WITH_INFRA) $(WITH_K8S) $(BIN)/console --binary $(BIN)/aeropartners

.PHONY: bench
bench: build ## Benchmarks: POST /pagos vs pgbench, reports GET vs /health and freshness, collector events/s vs pgbench, the retention job's cost to writes, a 2-minute soak (prints figures)
	@$(WITH_INFRA) $(BIN)/bench-payments --binary $(BIN)/aeropartners $(BENCH_ARGS)
	@$(WITH_INFRA) $(BIN)/bench-reports --binary $(BIN)/aeropartners $(BENCH_REPORTS_ARGS)
	@$(WITH_INFRA) $(BIN)/bench-collector $(BENCH_COLLECTOR_ARGS)
	@$(WITH_INFRA) $(BIN)/bench-retention $(BENCH_RETENTION_ARGS)
	@$(WITH_INFRA) $(BIN)/soak --binary $(BIN)/aeropartners --warmup 30 --seconds 90 $(SOAK_ARGS)

.PHONY: soak
soak: build ## The whole platform under sustained load: RSS per service, log sizes, Ctrl-C stop time
	@$(WITH_INFRA) $(BIN)/soak --binary $(BIN)/aeropartners $(SOAK_ARGS)

.PHONY: fuzz
fuzz: build ## Every API fuzzed from its OpenAPI document by schemathesis (PyPI, installed once) against a platform of its own; FUZZ_EXAMPLES cases per operation (30); part of make test
	@$(WITH_INFRA) $(BIN)/fuzz --binary $(BIN)/aeropartners $(FUZZ_ARGS)

.PHONY: faults
faults: build ## The fault matrix: every service SIGKILLed in turn, Pulsar down 20 s, topics unloaded, PostgreSQL restarted and paused, a held-back worker, under mixed load (table + JSON in target/scenarios/)
	@$(WITH_INFRA) $(BIN)/faults --binary $(BIN)/aeropartners $(FAULTS_ARGS)

.PHONY: faults-short
faults-short: build ## The short fault matrix of make test: a payments API and a worker SIGKILLed, topics unloaded, PostgreSQL restarted and paused
	@$(WITH_INFRA) $(BIN)/faults --short --binary $(BIN)/aeropartners

.PHONY: scenario-2
scenario-2: build ## Quality scenario #2 in full: SIGKILL a campaigns instance under 200 req/s for 60 s (the load calls with a partner key)
	@$(WITH_INFRA) $(BIN)/scenario-2 --binary $(BIN)/aeropartners $(SCENARIO_ARGS)

.PHONY: scenario-3
scenario-3: build k8s-up ## Quality scenario #3 in full: 10 000 partner events sent 1-3 times, shuffled, with a collector and a worker SIGKILLed (partners with keys and signatures, checked by an operator of the test API server)
	@$(WITH_INFRA) $(WITH_K8S) $(BIN)/scenario-3 --binary $(BIN)/aeropartners $(SCENARIO_ARGS)

SCENARIO9_MODE ?= database

.PHONY: scenario-9
scenario-9: build k8s-up ## Quality scenario #9 in full: 100 report version switches under load (SCENARIO9_MODE=database|kubernetes), switched and read by an operator of the test API server
	@$(WITH_INFRA) $(WITH_K8S) $(BIN)/scenario-9 --mode $(SCENARIO9_MODE) --binary $(BIN)/aeropartners $(SCENARIO_ARGS)

# --- Kubernetes (kind) -----------------------------------------------------------------------
# The README's path: make images, make kind-up, make kind-load, make deploy. `make e2e` runs the
# same deploy target on its test cluster, with only KUBECONFIG and IMAGE differing.
APP_VERSION := $(shell awk '/^appVersion:/ { gsub(/"/, "", $$2); print $$2 }' charts/aeropartners/Chart.yaml)
IMAGE_REPOSITORY ?= localhost/aeropartners
# `make images` names every build by its content (…:<appVersion>-dev.<image id>) and records the
# name here: a rebuild gets a new tag, so `make deploy` rolls the pods out to it (a reused tag
# with pullPolicy IfNotPresent never would).
IMAGE_FILE := target/image
IMAGE ?= $(shell cat $(IMAGE_FILE) 2>/dev/null || echo $(IMAGE_REPOSITORY):$(APP_VERSION))
NAMESPACE ?= aeropartners
RELEASE ?= aeropartners
KIND_CLUSTER ?= aeropartners
# kind-multinode-config.yaml: a control plane and two workers in two zones, as `make e2e` runs.
KIND_CONFIG ?= kind-config.yaml
# Values `make deploy` adds to the chart's defaults: kind's NodePorts (empty for none).
DEPLOY_VALUES ?= kind-values.yaml
# The release's ReportVersion: <fullname>-reports, where the fullname is the release's name
# when it contains "aeropartners".
REPORT_VERSION ?= $(if $(findstring aeropartners,$(RELEASE)),$(RELEASE),$(RELEASE)-aeropartners)-reports

.PHONY: images
images: ## Build the container image (Docker) with every binary, tagged by its content (target/image)
	docker build -t $(IMAGE_REPOSITORY):$(APP_VERSION)-dev .
	@mkdir -p $(dir $(IMAGE_FILE))
	@id=$$(docker image inspect --format '{{.Id}}' $(IMAGE_REPOSITORY):$(APP_VERSION)-dev); \
		image=$(IMAGE_REPOSITORY):$(APP_VERSION)-dev.$$(printf '%s' "$${id#sha256:}" | cut -c1-12); \
		docker tag $(IMAGE_REPOSITORY):$(APP_VERSION)-dev "$$image" && echo "$$image" > $(IMAGE_FILE) && echo "image: $$image"

.PHONY: kind-up
kind-up: ## Create the kind cluster with the user-facing ports mapped to localhost
	kind create cluster --config $(KIND_CONFIG)

.PHONY: kind-load
kind-load: ## Load the image into the kind cluster
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

.PHONY: deploy
deploy: ## helm install/upgrade the chart (CRDs, PostgreSQL, Pulsar, migrations included) and wait until it is Ready
	@image='$(IMAGE)'; \
	if [[ "$$image" == *@sha256:* ]]; then set -- --set image.repository="$${image%@*}" --set image.digest="$${image#*@}"; \
	else set -- --set image.repository="$${image%:*}" --set image.tag="$${image##*:}"; fi; \
	set -x; helm upgrade --install $(RELEASE) charts/aeropartners --namespace $(NAMESPACE) --create-namespace \
		$(addprefix -f ,$(DEPLOY_VALUES)) "$$@" --wait --wait-for-jobs --timeout 10m

.PHONY: helm-test
helm-test: ## Check the deployed release from inside the cluster (helm test: readiness, a payment round trip, the report version)
	helm test $(RELEASE) --namespace $(NAMESPACE) --logs --timeout 5m

.PHONY: undeploy
undeploy: ## Remove the release (the CRD and the data volumes stay)
	helm uninstall $(RELEASE) --namespace $(NAMESPACE) --wait
	@echo "Kept: the ReportVersion CRD (kubectl delete crd reportversions.aeropartners.io removes every ReportVersion)" \
		"and the in-chart databases' volumes (kubectl -n $(NAMESPACE) delete pvc -l app.kubernetes.io/instance=$(RELEASE)); a reinstall reuses them"

GATEWAY_URL ?= http://127.0.0.1:8000

.PHONY: switch-v1 switch-v2
switch-v1 switch-v2: switch-%: ## Switch the report version of the running platform (PUT /api/reports/version on GATEWAY_URL)
	@curl -sS --fail-with-body -X PUT -H 'content-type: application/json' \
		-d '{"active":"$*"}' $(GATEWAY_URL)/api/reports/version; echo

.PHONY: kube-switch-v1 kube-switch-v2
kube-switch-v1 kube-switch-v2: kube-switch-%: ## Switch the report version in the cluster (kubectl patch rv) and wait until it is served
	kubectl -n $(NAMESPACE) patch rv $(REPORT_VERSION) --type merge -p '{"spec":{"version":"$*"}}'
	kubectl -n $(NAMESPACE) wait --for=condition=Ready rv/$(REPORT_VERSION) --timeout=2m
	kubectl -n $(NAMESPACE) get rv $(REPORT_VERSION)
