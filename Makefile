# The two commands a new user needs: `make demo` and `make test`.
# Both build .venv from the hashed lock (requirements.lock, exported from uv.lock)
# the first time; nothing is installed outside the project folder.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest soak bench lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fulfill demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check fulfill tests bench
	$(BIN)/ruff format --check fulfill tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Not part of `make test`: 10,000 sessions through API faults, duplicate and
# out-of-order webhooks, landing visits and two SIGKILLs of the server, on
# 127.0.0.1, within 30 minutes; prints what the receiver saw and fails on anything
# missed or repeated other than an item in flight at a kill (docs/soak.md). `make test` runs 500 of them (tests/test_soak.py).
soak: $(STAMP)
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

# Not part of `make test`: the service next to a bare server on the same stack,
# on 127.0.0.1 against the emulator (100 ms API latency): new sessions by webhook
# at rising rates, duplicate webhooks, landing pages, API calls per session, peak
# RSS; SQLite with 1 and 2 processes, PostgreSQL when it answers; then the code
# Stripe's fulfillment guide leads to (bench/peers/guide.py) under gunicorn, beside
# it. One table and var/bench.json in about 5 minutes (docs/benchmark.md);
# BENCH_ARGS=--help.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerate uv.lock and requirements.lock after changing dependencies in pyproject.toml.
lock:
	test -x .lockenv/bin/uv || ($(PYTHON) -m venv .lockenv && .lockenv/bin/pip install --quiet uv==0.13.8)
	.lockenv/bin/uv lock
	.lockenv/bin/uv export --frozen --all-groups --no-emit-project --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .lockenv .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
