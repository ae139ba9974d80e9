# cgnat: build, demo and test entry points. `make help` lists the targets.
#
# Everything that needs the namespace lab or DPDK runs as root on Debian 12.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Two cores on the reference machine: keep rustc from oversubscribing them.
export CARGO_BUILD_JOBS ?= 2
export CARGO_TERM_COLOR ?= never
PYTHON ?= /usr/bin/python3
KEEP ?= 0

.PHONY: help deps build demo test unit e2e lint-scripts lab-up lab-down fmt fmt-check clippy clean bench bench-instr

help: ## Show this help
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "KEEP=1 make demo leaves the lab and cgnatd running (make lab-down removes them)."

deps: ## Install missing Debian packages (DPDK, clang, lab tools); idempotent
	scripts/deps.sh

build: deps ## Build every crate in release mode (target/release/cgnatd, cgnatctl)
	$(CARGO) build --release --workspace

demo: deps build ## Run the lab demo: two subscribers through cgnatd, what the servers saw
	KEEP=$(KEEP) scripts/demo.sh

# The order matters: cheap checks first, the lab last. Each step fails the run.
test: deps ## fmt check, clippy, unit and crate tests, release build, end-to-end lab tests
	$(MAKE) --no-print-directory fmt-check
	$(MAKE) --no-print-directory lint-scripts
	$(MAKE) --no-print-directory clippy
	$(MAKE) --no-print-directory unit
	$(CARGO) build --release --workspace
	$(MAKE) --no-print-directory e2e

unit: ## Unit and integration tests of every crate (no lab needed)
	$(CARGO) test --workspace --release --exclude cgnat
	$(CARGO) test --release -p cgnat --lib

# The same suite runs on one worker, on two (handoff rings between workers), with
# address-and-port-dependent filtering (the filtering and hairpin cases check either mode), with
# short timeouts, tight quotas and management tokens (quota, drain and token cases), and on
# net_pcap ports (the fragment case: net_af_packet lets the kernel reassemble fragments).
E2E_CONFIGS ?= config/lab.yaml config/lab-2workers.yaml config/lab-apdf.yaml config/lab-short.yaml config/lab-pcap.yaml

e2e: ## End-to-end tests through the namespace lab, once per lab config (root; needs `make build`)
	for c in $(E2E_CONFIGS); do \
	  echo "== e2e with $$c"; \
	  CGNAT_CONFIG=$$c $(CARGO) test --release -p cgnat --test e2e -- --test-threads=1; \
	done

lint-scripts: ## Syntax-check the shell scripts and python helpers
	for f in scripts/*.sh perf/*.sh .ci/run; do bash -n "$$f"; done
	$(PYTHON) -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' tests/tools/*.py perf/*.py

bench: deps ## Local benchmarks (pipeline, testpmd references, system over memif) -> perf/RESULTS.md
	perf/run.sh

bench-instr: deps ## Instructions per packet, cgnatd vs testpmd io-forward (callgrind) -> perf/INSTRUCTIONS.md
	perf/instr.sh

lab-up: deps build ## Create the lab and leave cgnatd running in the background
	scripts/lab.sh up
	scripts/lab.sh start
	scripts/lab.sh wait

lab-down: ## Stop the background cgnatd and remove the lab
	scripts/lab.sh stop
	scripts/lab.sh down

fmt: ## Format all Rust code
	$(CARGO) fmt --all

fmt-check: ## Check Rust formatting
	$(CARGO) fmt --all --check

clippy: ## Lint every crate and target, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: ## Remove build output and lab state (takes the lab down first)
	-scripts/lab.sh stop
	-scripts/lab.sh down
	$(CARGO) clean
	rm -rf .lab
