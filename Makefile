# msgin5g — two set-up commands for a fresh clone: `make demo` and `make test`.
# Each creates the virtualenv (.venv) from the project's own files when it is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick clean venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# coaps: aiocoap's DTLS server needs DTLSSocket, built from source (autoconf, automake, libtool), with
	@# room for PSK identities longer than tinydtls's default 32 bytes (ue:urn:gsma:imei:… is 34)
	CFLAGS="-DDTLS_PSK_MAX_CLIENT_IDENTITY_LEN=256" $(BIN)/python -m pip install --quiet --no-cache-dir \
		--no-binary DTLSSocket "DTLSSocket==0.2.3"
	$(BIN)/python -m pip install --quiet -e ".[test,report,dtls]"
	@touch $(STAMP)

venv: $(STAMP)

## Run the demo on embedded SQLite (temporary directory; nothing is left behind).
demo: $(STAMP)
	$(BIN)/msgin5g demo

## Run the whole test suite (needs PostgreSQL on 127.0.0.1:5432 for the store suite).
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

## Benchmarks: ratios against baselines measured in the same run, plus memory.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build src/*.egg-info
