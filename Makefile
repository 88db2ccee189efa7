# The commands a newcomer needs: `make run` starts the router, `make test` runs the tests.
# Each creates its own virtualenv (.venv) on first use; nothing but Python 3.11+ is required.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint format demo bench bench-peers bench-failover bench-cache soak chaos check-config clean

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime tests/requirements.txt
	$(BIN)/python -m pip install --quiet -r tests/requirements.txt
	touch $@

## run: start the router (gunicorn + gevent) on $$PORT (default 8082) with configs/*.json
run: $(VENV)/.runtime
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## demo: the router with a FAKE vendor standing in for OpenAI and Gemini (no keys, offline)
demo: $(VENV)/.runtime
	$(BIN)/python -m tests.demo

## test: every test, unit and integration (real gunicorn, fake vendor, nginx and redis if installed)
test: $(VENV)/.dev
	$(BIN)/python -m pytest

## lint: ruff lint and format check
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## check-config: validate configs/*.json without starting the server
check-config: $(VENV)/.runtime
	$(BIN)/python -m app check-config

## bench: the benchmark (router vs. the fake vendor called directly); not part of `make test`
bench: $(VENV)/.dev
	$(BIN)/python -m tests.bench

## bench-peers: the benchmark 3 times with Portkey and LiteLLM in the same runs (installed into ~/.cache/router-bench), and nginx in front of the router
bench-peers: $(VENV)/.dev
	$(BIN)/python -m tests.bench --peers portkey,litellm --nginx --repeat 3

## bench-failover: one of two vendors errs, stalls, then drops streams under constant load, and recovers
bench-failover: $(VENV)/.dev
	$(BIN)/python -m tests.bench --failover

## bench-cache: agent sessions through 4 keys of one model with an emulated prompt cache, affinity on and off
bench-cache: $(VENV)/.dev
	$(BIN)/python -m tests.bench --cache

## soak: the benchmark's 10-minute memory soak
soak: $(VENV)/.dev
	$(BIN)/python -m tests.bench --soak 600

## chaos: 10 minutes of mixed clients through nginx to 2 routers while a vendor flaps, Redis and
## instances restart, configs reload and a key is revoked; not part of `make test` (README "Chaos run")
chaos: $(VENV)/.dev
	$(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
