# One setup path for everything: a .venv with the package and its test extras, and the
# pinned npm tools (solc-js, anvil, ocpp-rpc). Stamp files make a repeated setup instant.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.devsen-installed
STAMP_NPM := node_modules/.devsen-installed

.PHONY: setup devnet test lint typecheck pytest bench sim byzantine clean

setup: $(STAMP_PY) $(STAMP_NPM) browser

## Debian's chromium and chromium-driver for the explorer's browser tests (tests/e2e/test_e2e_explorer.py);
## a no-op when both are installed; installs them as root (CI), else says how.
.PHONY: browser
browser:
	@if ! command -v chromium >/dev/null || ! test -x /usr/bin/chromedriver; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "the explorer's browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi; \
	fi

$(STAMP_PY): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## Start a local multi-node DEVSEN network on an embedded chain (Ctrl-C stops it).
devnet: setup
	$(VENV)/bin/devsen devnet --demo

## Lint, type-check and run the whole test suite.
test: setup lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy primitives consensus ocpp_adapter anchoring devsen p2p contracts
	$(VENV)/bin/mypy bench tests  # every test directory, strict

## Two workers, each running whole modules (a module's devnet fixture stays in one worker): the
## multi-process tests mostly wait on blocks and confirmations, so two share the 2 cores well.
PYTEST_WORKERS ?= 2
pytest: setup
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

bench: setup
	$(PY) bench/run_all.py

## The Byzantine suite: 4 real node processes on anvil, one of them running an altered
## behaviour (tests/byzantine/behaviours); about 8 minutes.
byzantine: setup
	$(VENV)/bin/pytest -q -m byzantine tests/byzantine -rxX

## The fault simulator: 10,000 seeds over 4, 7 and 10 validators, then 200 seeds of each seeded
## faulty core (each must be caught in most of them); summary in bench/results/sim.json.
## SIM_JOBS worker processes (results do not depend on it). About 30 min of CPU.
SIM_SEEDS ?= 10000
SIM_JOBS ?= 2
sim: setup
	rm -f bench/results/sim.json
	$(PY) -m consensus.sim --jobs $(SIM_JOBS) --validators 4 --seeds $$(( $(SIM_SEEDS) * 6 / 10 )) --summary bench/results/sim.json
	$(PY) -m consensus.sim --jobs $(SIM_JOBS) --validators 7 --seeds $$(( $(SIM_SEEDS) * 3 / 10 )) --first-seed 100000 --summary bench/results/sim.json
	$(PY) -m consensus.sim --jobs $(SIM_JOBS) --validators 10 --seeds $$(( $(SIM_SEEDS) / 10 )) --first-seed 200000 --summary bench/results/sim.json
	for core in no-wal majority-quorum ignored-lock; do \
	  $(PY) -m consensus.sim --jobs $(SIM_JOBS) --validators 4 --seeds 200 --faulty-core $$core --summary bench/results/sim.json || true; \
	done

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

## Recompile the Solidity contracts with the pinned solc-js and rewrite the committed artifacts.
.PHONY: contracts
contracts: setup
	$(PY) -m contracts.build
