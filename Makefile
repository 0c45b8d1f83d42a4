# The two commands: `make run` and `make test`. See README.md.
SHELL := bash
CARGO ?= cargo
SCENARIO ?= all
DURATION ?= 30

.PHONY: run test servers lint unit bench check fmt conformance deploy-check profile

## Build and start the service on 127.0.0.1:8080 with a local PostgreSQL under .data/ and a demo merchant.
run: servers
	$(CARGO) build --bin rampart
	RAMPART_ENV=$${RAMPART_ENV:-development} ./target/debug/rampart serve

## Everything CI checks: formatting, lints, the deployment files, then the whole test suite against real servers.
test: servers lint deploy-check
	$(CARGO) test --workspace --lib --bins --tests

## The running service against its OpenAPI description (schemathesis, all checks, stateful links).
conformance:
	bash scripts/conformance.sh

## The compose file (docker-compose config) and the Kubernetes manifests (kubernetes-validate).
deploy-check:
	bash scripts/deploy-check.sh

servers:
	@bash scripts/ensure-servers.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

check:
	$(CARGO) check --workspace --all-targets

## Load and micro benchmarks; see BENCHMARKS.md. make bench SCENARIO=product DURATION=20
bench: servers
	SOAK_SECS=$${SOAK_SECS:-600} bash bench/run.sh "$(SCENARIO)" "$(DURATION)"

## A CPU profile of one scenario and its flame graph (SVG): make profile SCENARIO=mixed DURATION=20
profile: servers
	SOAK_SECS=0 bash bench/profile.sh "$(if $(filter all,$(SCENARIO)),product,$(SCENARIO))" "$(DURATION)"
