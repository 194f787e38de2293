# umbra: `make demo` to run it, `make test` to test it. See README.md.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
# The test stack runs on its own ports and state folder so that it never touches a running demo.
TEST_STATE := .state/test
TEST_BROKER_PORT ?= 19092
TEST_REGISTRY_PORT ?= 18081
DEV_STATE := .state/dev
SERVICES := ingest forecast shadow-manager interceptor rebalancer
# Started by `make demo` next to the services: the embedded default fleet.
DEMO_PROCESSES := $(SERVICES) fleet-sim
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | $(PYTHON) -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo target)

.PHONY: bench-forecast bench-venv bench-shadow bench-interceptor bench-ingest bench-scaleup sweep
.PHONY: test-tools chaos
.PHONY: all build test unit-test integration-test test-stack-up test-stack-down bench lint demo bench-replay run run-down status venv clean

all: build

build:
	$(CARGO) build --workspace --bins

# Python packages for the cross-client tests, in a virtualenv of the project's own.
venv: $(VENV)/.installed
$(VENV)/.installed:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'confluent-kafka[avro,schemaregistry]>=2.6'
	touch $@

# Debian packages the tests use, installed when missing and this is a Debian machine we may
# install on: prometheus (and promtool) for the Prometheus import test, kubectl for rendering
# the Kubernetes manifests.
TEST_PACKAGES := prometheus:promtool kubectl:kubectl openssl:openssl
test-tools:
	@missing=""; for p in $(TEST_PACKAGES); do command -v $${p#*:} >/dev/null 2>&1 || missing="$$missing $${p%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "note: the tests need the Debian packages:$$missing (apt-get install$$missing)"; fi; fi

# Unit tests (no broker) and integration tests against a real Nisshi broker and the dev
# registry, started here on 127.0.0.1 and stopped afterwards whatever the outcome.
test: venv test-tools
	$(CARGO) build --workspace --bins --tests
	$(MAKE) --no-print-directory test-stack-up
	set -o pipefail; \
	KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(TEST_BROKER_PORT) \
	SCHEMA_REGISTRY_URL=http://127.0.0.1:$(TEST_REGISTRY_PORT) \
	PYTHON_FOR_TESTS=$(CURDIR)/$(VENV)/bin/python \
	$(CARGO) test --workspace --no-fail-fast; status=$$?; \
	$(MAKE) --no-print-directory test-stack-down; exit $$status

test-stack-up:
	rm -rf $(TEST_STATE)
	env -u KAFKA_BOOTSTRAP_SERVERS -u SCHEMA_REGISTRY_URL $(TARGET_DIR)/debug/umbra dev up \
	  --state-dir $(TEST_STATE) --broker-port $(TEST_BROKER_PORT) --registry-port $(TEST_REGISTRY_PORT) \
	  > /dev/null

test-stack-down:
	-$(TARGET_DIR)/debug/umbra dev down --state-dir $(TEST_STATE)

# The fault suite: load through the pipeline while faults happen (SIGKILLs, a broker restart,
# a registry outage, interceptors joining and leaving, poison and duplicated input, fleet
# faults, all mixed), then the history checker's table of scenarios x invariants. A broker and
# registry of its own on 39192/38181, state in .state/chaos. `make test` runs `--short`.
chaos:
	$(CARGO) build --workspace --bins
	$(TARGET_DIR)/debug/umbra chaos --out chaos-report.md

# Benchmarks print their figures next to a baseline measured in the same run.
bench: bench-forecast bench-shadow bench-interceptor bench-ingest bench-scaleup
	$(CARGO) build --release -p umbra-bench --bin umbra-bench
	$(TARGET_DIR)/release/umbra-bench

# Shadow placement (no broker) and shadow table restore (a broker and registry of its own,
# started here and stopped afterwards): `make bench-shadow [ROWS=N]`.
BENCH_STATE := .state/bench
BENCH_BROKER_PORT ?= 29092
BENCH_REGISTRY_PORT ?= 28081
ROWS ?= 1000000
bench-shadow:
	$(CARGO) build --release -p umbra-bench --bin bench-shadow -p umbra-cli --bin umbra
	rm -rf $(BENCH_STATE)
	env -u KAFKA_BOOTSTRAP_SERVERS -u SCHEMA_REGISTRY_URL $(TARGET_DIR)/release/umbra dev up \
	  --state-dir $(BENCH_STATE) --broker-port $(BENCH_BROKER_PORT) --registry-port $(BENCH_REGISTRY_PORT) > /dev/null
	$(TARGET_DIR)/release/bench-shadow --rows $(ROWS) --bootstrap 127.0.0.1:$(BENCH_BROKER_PORT) \
	  --registry http://127.0.0.1:$(BENCH_REGISTRY_PORT); status=$$?; \
	$(TARGET_DIR)/release/umbra dev down --state-dir $(BENCH_STATE); exit $$status

# Interceptor latency next to the broker's two-hop floor, and its decision core:
# `make bench-interceptor [RATES=1000,5000] [SECONDS=5]`, on a fresh broker of its own.
RATES ?= 1000,5000
SECONDS ?= 5
bench-interceptor:
	$(CARGO) build --release -p umbra-bench --bin bench-interceptor -p umbra-interceptor --bin umbra-interceptor -p umbra-cli --bin umbra
	rm -rf $(BENCH_STATE)
	env -u KAFKA_BOOTSTRAP_SERVERS -u SCHEMA_REGISTRY_URL $(TARGET_DIR)/release/umbra dev up \
	  --state-dir $(BENCH_STATE) --broker-port $(BENCH_BROKER_PORT) --registry-port $(BENCH_REGISTRY_PORT) > /dev/null
	$(TARGET_DIR)/release/bench-interceptor --rates $(RATES) --seconds $(SECONDS) --bootstrap 127.0.0.1:$(BENCH_BROKER_PORT) \
	  --registry http://127.0.0.1:$(BENCH_REGISTRY_PORT); status=$$?; \
	$(TARGET_DIR)/release/umbra dev down --state-dir $(BENCH_STATE); exit $$status

# Python statsforecast and prophet for the forecast comparison, in a virtualenv of the bench's own.
BENCH_VENV := .venv-bench
bench-venv: $(BENCH_VENV)/.installed
$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check 'statsforecast>=1.7' 'prophet>=1.1.5'
	touch $@

# Rolling-origin forecast evaluation: `make bench-forecast DATA=DIR JSON=FILE [FORECAST_VMS=N] [ORIGINS=N]`.
# (Its own VM count: the demo's VMS is 50.)
DATA ?= ../shared/data/bitbrains-rnd
FORECAST_VMS ?= 3
ORIGINS ?= 14
bench-forecast: bench-venv
	$(CARGO) build --release -p umbra-bench --bin bench-forecast
	$(TARGET_DIR)/release/bench-forecast --data $(DATA) --vms $(FORECAST_VMS) --origins $(ORIGINS) \
	  --python $(BENCH_VENV)/bin/python $(if $(JSON),--json $(JSON))

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The demo: builds, then `umbra replay` starts a broker and registry of its own (ports 39092 and
# 38081, state in .state/replay), the five services and the fleet simulator, replays two weeks
# of history and a live week of ../shared/data/bitbrains-rnd in lockstep (docs/replay.md), and
# writes the report to demo-report/. `make demo VMS=20 SEED=2` changes the run;
# `make demo REALTIME=1 LIVE_MINUTES=6` runs the live week in compressed real time instead.
VMS ?= 50
SEED ?= 1
LIVE_MINUTES ?= 4
demo:
	$(CARGO) build --release --workspace --bins
	env -u KAFKA_BOOTSTRAP_SERVERS -u SCHEMA_REGISTRY_URL $(TARGET_DIR)/release/umbra replay \
	  --data $(DATA) --vms $(VMS) --seed $(SEED) --live-minutes $(LIVE_MINUTES) \
	  $(if $(REALTIME),--realtime) --out demo-report

# The hit-rate-against-reserve curve alone, offline on the same plan (no broker, no services):
# umbra's pooled scale-up rule at each budget against every baseline at the same reserves.
# `make sweep [VMS=N SEED=S DATA=DIR]`; report in sweep-report/.
sweep:
	$(CARGO) build --release -p umbra-cli --bin umbra
	$(TARGET_DIR)/release/umbra replay --sweep --data $(DATA) --vms $(VMS) --seed $(SEED) --out sweep-report

# The scale-up model's crate chosen by measurement: gradient boosting (forust-ml) against a
# logistic regression (linfa-logistic), Brier scores and fit times, seeds 1-3.
bench-scaleup:
	$(CARGO) build --release -p umbra-bench --bin bench-scaleup
	$(TARGET_DIR)/release/bench-scaleup --data $(DATA) --vms $(VMS)

# The same evaluation headless, for benchmarking: `make bench-replay [VMS=N SEED=S DATA=DIR]`.
bench-replay:
	$(CARGO) build --release --workspace --bins
	env -u KAFKA_BOOTSTRAP_SERVERS -u SCHEMA_REGISTRY_URL $(TARGET_DIR)/release/umbra replay --quiet \
	  --data $(DATA) --vms $(VMS) --seed $(SEED) --live-minutes $(LIVE_MINUTES) --out .state/bench-replay

# The dev stack and the five services with the fleet simulator in the background, to use by
# hand (`umbra request`, `umbra table`, `umbra decisions`); `make run-down` stops them.
run:
	$(CARGO) build --release --workspace --bins
	$(TARGET_DIR)/release/umbra dev up --state-dir $(DEV_STATE)
	@for s in $(DEMO_PROCESSES); do \
	  if [ -f $(DEV_STATE)/$$s.pid ] && kill -0 $$(cat $(DEV_STATE)/$$s.pid) 2>/dev/null; then echo "$$s: already running"; continue; fi; \
	  nohup $(TARGET_DIR)/release/umbra-$$s > $(DEV_STATE)/$$s.log 2>&1 & echo $$! > $(DEV_STATE)/$$s.pid; \
	  echo "$$s: started (pid $$!, log $(DEV_STATE)/$$s.log)"; \
	done
	@echo
	@echo "umbra is running: broker 127.0.0.1:9092, registry http://127.0.0.1:8081, five services and the fleet simulator (8 hosts)."
	@echo "Try:   $(TARGET_DIR)/release/umbra request --workload vm-001"
	@echo "       $(TARGET_DIR)/release/umbra table"
	@echo "Stop:  make run-down"

run-down:
	$(TARGET_DIR)/release/umbra dev down --state-dir $(DEV_STATE)

status:
	$(TARGET_DIR)/debug/umbra dev status --state-dir $(DEV_STATE)

clean:
	$(CARGO) clean
	rm -rf .state $(VENV)

# Ingest throughput next to a plain consume-and-produce relay: `make bench-ingest [SAMPLES=N]`.
SAMPLES ?= 200000
bench-ingest:
	$(CARGO) build --release -p umbra-bench --bin bench-ingest -p umbra-ingest --bin umbra-ingest -p umbra-cli --bin umbra
	rm -rf $(BENCH_STATE)
	env -u KAFKA_BOOTSTRAP_SERVERS -u SCHEMA_REGISTRY_URL $(TARGET_DIR)/release/umbra dev up \
	  --state-dir $(BENCH_STATE) --broker-port $(BENCH_BROKER_PORT) --registry-port $(BENCH_REGISTRY_PORT) > /dev/null
	$(TARGET_DIR)/release/bench-ingest --samples $(SAMPLES) --bootstrap 127.0.0.1:$(BENCH_BROKER_PORT) \
	  --registry http://127.0.0.1:$(BENCH_REGISTRY_PORT); status=$$?; \
	$(TARGET_DIR)/release/umbra dev down --state-dir $(BENCH_STATE); exit $$status
