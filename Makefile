# Körpü — set-up, tests and the demo. Every target creates .venv and installs the project when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint types unit system-deps clean bench bench-long

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# System tools the tests drive (openssl and xmlsec1 for independent verification). Installed only when missing.
system-deps:
	@command -v openssl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openssl; \
	  else echo "openssl is required: install it (apt-get install openssl)" >&2; exit 1; fi; }
	@command -v xmlsec1 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq xmlsec1; \
	  else echo "xmlsec1 is required: install it (apt-get install xmlsec1)" >&2; exit 1; fi; }

demo: $(STAMP)
	$(BIN)/korpu demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-deps
	$(BIN)/pytest -q

test: lint types unit

# Benchmarks (not part of `make test`): Körpü against a bare mTLS proxy chain, each server its own process.
# See benchmarks/README.md.  BENCH_ARGS passes options to benchmarks/run.py, e.g. BENCH_ARGS='--pg'.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# The soak: a million exchanges while sampling both security servers' RSS (hours at the 2-core rate), plus the
# person query over a generated 10 M-record log.
bench-long: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py --soak-requests 1000000 --personquery $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
