# The two commands of the README: `make dev` (install and run the local stack with the example
# workflow) and `make test` (install and run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test postgres-server prometheus-server chromium schema-registry lint bench bench-quick bench-load bench-flow bench-flow-memory bench-scale bench-recovery clean check-deploy

$(BIN)/stepstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

dev: $(BIN)/stepstream
	$(BIN)/stepstream dev --example

test: $(BIN)/stepstream postgres-server prometheus-server chromium schema-registry
	$(BIN)/python -m pytest

# The query store's tests on PostgreSQL start a server of their own (tests/postgres.py) from Debian's
# package: installed here when missing (set STEPSTREAM_TEST_POSTGRES to use a server of yours instead).
postgres-server:
	@if [ -z "$$STEPSTREAM_TEST_POSTGRES" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    && ! command -v initdb >/dev/null; then \
	  echo "installing PostgreSQL (Debian's postgresql package) for the query-store tests"; \
	  apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; \
	fi

# The metrics tests scrape the services with a real Prometheus, and check the alert rules with its
# promtool (tests/prometheus.py): Debian's prometheus package, installed here when missing (or set
# STEPSTREAM_TEST_PROMETHEUS to a prometheus binary with promtool beside it).
prometheus-server:
	@if [ -z "$$STEPSTREAM_TEST_PROMETHEUS" ] && ! command -v prometheus >/dev/null; then \
	  echo "installing Prometheus (Debian's prometheus package) for the metrics tests"; \
	  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; \
	fi

# The dashboard's browser tests drive Chromium through Playwright (tests/browser): Debian's chromium
# package, installed here when missing (Playwright's own browser download does not work here), or the
# binary STEPSTREAM_TEST_CHROMIUM names.
chromium:
	@if [ -z "$$STEPSTREAM_TEST_CHROMIUM" ] && ! command -v chromium >/dev/null; then \
	  echo "installing Chromium (Debian's chromium package) for the dashboard's browser tests"; \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	fi

# The Confluent-format tests need a schema registry: Apicurio Registry, fetched from Maven Central into
# ~/.cache/stepstream on first use (stepstream/avro/local_registry.py; docs/decisions/0014), or the one
# STEPSTREAM_TEST_REGISTRY names.
schema-registry: $(BIN)/stepstream
	@if [ -z "$$STEPSTREAM_TEST_REGISTRY" ]; then \
	  $(BIN)/python -c 'from stepstream.avro.local_registry import fetch; fetch()'; \
	fi

lint: $(BIN)/stepstream
	$(BIN)/ruff check services tests examples bench
	$(BIN)/ruff format --check services tests examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The hot path against a plain-HTTP floor, one table (bench/README.md): ~3 min, or ~1.4 min quick. Add
# columns with BENCH_ARGS, e.g. make bench BENCH_ARGS='--mode budget0=STEPSTREAM_STEP_BUDGET_MS=0'.
bench: $(BIN)/stepstream
	$(BIN)/python bench/hotpath.py $(BENCH_ARGS)

bench-quick: $(BIN)/stepstream
	$(BIN)/python bench/hotpath.py --quick $(BENCH_ARGS)

# 100 concurrent runs per step budget (bench/README.md, "Load"): ~1.5 min.
bench-load: $(BIN)/stepstream
	$(BIN)/python bench/run.py

# Flow control (bench/README.md): the bookkeeping's cost on throughput (~2 min), and the scheduler's
# memory and restore time with 100,000 queued deliveries (~2 min).
bench-flow: $(BIN)/stepstream
	$(BIN)/python bench/run.py --flow --runs 100 --steps 5 --sleep-ms 0 --rounds 5

bench-flow-memory: $(BIN)/stepstream
	$(BIN)/python bench/flow_memory.py

# Scale (bench/README.md): each service's memory per sleeping and per finished run, and its restore after a
# SIGKILL, with 100,000 runs a phase (~9 min here); BENCH_ARGS='--quick' for 5,000 (~2 min).
bench-scale: $(BIN)/stepstream
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

# Recovery (bench/README.md): how long runs stall when a service is killed with SIGKILL and restarted,
# or the broker stops for 3 s and 15 s, and how many ERROR/WARNING lines the services log (~10 min).
bench-recovery: $(BIN)/stepstream
	$(BIN)/python bench/recovery.py

clean:
	rm -rf $(VENV) .stepstream

# Dockerfile, compose.yaml and the Helm chart, checked without a Docker engine or a cluster
# (deploy/check says what it checks). Its pinned tools are cached in ~/.cache/stepstream/tools.
check-deploy: $(BIN)/stepstream
	deploy/check
