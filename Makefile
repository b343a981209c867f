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
	@# (only coaps needs it: without the build tools everything else is installed, and `make test` says so)
	CFLAGS="-DDTLS_PSK_MAX_CLIENT_IDENTITY_LEN=256" $(BIN)/python -m pip install --quiet --no-cache-dir \
		--no-binary DTLSSocket "DTLSSocket==0.2.3" \
	|| echo "msgin5g: DTLSSocket did not build, so coaps (--dtls-port) is unavailable;" \
		"apt-get install autoconf automake libtool, then rm $(STAMP) && make venv" >&2
	$(BIN)/python -m pip install --quiet -e ".[test,report]"
	@touch $(STAMP)

venv: $(STAMP)

## Run the demo on embedded SQLite (temporary directory; nothing is left behind).
demo: $(STAMP)
	$(BIN)/msgin5g demo

## Run the whole test suite (needs PostgreSQL on 127.0.0.1:5432 for the store suite).
test: $(STAMP)
	@$(BIN)/python -c "import DTLSSocket.dtls" 2>/dev/null || { echo "DTLSSocket is missing (the coaps tests need it):" \
		"apt-get install autoconf automake libtool, then rm $(STAMP) && make venv" >&2; exit 1; }
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
