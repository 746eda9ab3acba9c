# warmstart — the few commands people type. `make setup` is idempotent; every target that
# needs the environment depends on it.
PY_SYS ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DATA   ?= data
SHARED ?= ../shared/data
# Test runs use the CPU build of torch with two threads (the machine has two cores).
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup system-deps data test test-slow test-integration lint format demo tables bench clean

setup: $(STAMP) system-deps

# redis-server for the Redis tier tests: installed with apt only when missing and run as root;
# otherwise those tests skip and say how to enable them.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
	      echo "setup: could not install redis-server; the Redis tests will skip"; \
	  else echo "setup: redis-server missing (not root); the Redis tests will skip"; fi; }
	@# Debian's chromium for the browser tests (Playwright drives it; no browser download)
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	      echo "setup: could not install chromium; the browser tests will skip"; \
	  else echo "setup: /usr/bin/chromium missing (not root); the browser tests will skip"; fi; }

# torch==2.13.0 goes first so no dependency can resolve a bare `torch` to a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all]'
	touch $(STAMP)

data: setup
	$(VENV)/bin/warmstart data fetch --data-dir $(DATA) --shared $(SHARED)

# Unit tests, plus the fast integration tests on the real data when it is reachable
# ($WARMSTART_DATA, else ../shared/data, else ./data; they skip when none exists).
TEST_DATA ?= $(or $(WARMSTART_DATA),$(if $(wildcard $(SHARED)),$(SHARED),$(DATA)))
test: setup
	WARMSTART_DATA=$(TEST_DATA) $(PY) -m pytest -q

test-slow: setup
	WARMSTART_DATA=$(TEST_DATA) $(PY) -m pytest -q -m slow

test-integration: setup
	WARMSTART_DATA=$(TEST_DATA) $(PY) -m pytest -q -m integration

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

# The main job: train the demo models (quick preset, cached under runs/demo), serve the web page
# on 127.0.0.1 and print its URL; Ctrl-C stops it. `warmstart demo --check` is the headless check.
demo: setup data
	$(VENV)/bin/warmstart demo --data-dir $(DATA)

# The baseline tables and the ColdNAS Last.fm comparison (what `make demo` printed before the web demo).
tables: setup data
	$(VENV)/bin/warmstart coldstart baselines --data-dir $(DATA) --dataset lastfm-coldnas
	$(VENV)/bin/warmstart coldstart baselines --data-dir $(DATA) --dataset movielens-1m --seeds 0 1 2
	rm -rf runs/tables/coldnas-lastfm  # this target's own output; starts fresh under the current settings
	$(VENV)/bin/warmstart coldstart compare --data-dir $(DATA) --dataset lastfm-coldnas --seeds 0 1 2 \
		--epochs 60 --lr 3e-4 --weight-decay 3e-3 --search-weight-decay 0 --threads 1 --no-progress \
		--out runs/tables/coldnas-lastfm

bench: setup data
	WARMSTART_DATA=$(DATA) $(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
