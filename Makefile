# The two commands of the quick start: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
ARGS   ?=

.PHONY: serve test lint install bench

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Ferry needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)  ## install, then run the server on embedded defaults (ARGS="--port 9000" to change)
	$(BIN)/ferry server $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The tests start thousands of `ferry` processes: compile our modules once, so
# that each process need not (where PYTHONDONTWRITEBYTECODE is set, as on CI's
# machines, Python would otherwise compile them again in every process: ~0.1 s each)
test: lint  ## install, lint, type-check, check layers, run every test
	$(BIN)/python -m compileall -q server client protocol mobile_sdk tests/support >/dev/null
	$(BIN)/pytest -q -n 3 --durations=15 $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/transfer.py
