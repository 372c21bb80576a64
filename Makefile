# The two commands of the README:
#   make run    everything on this machine (embedded Redis), http://127.0.0.1:8000
#   make test   the whole test suite, with the real peers it needs
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test venv peers lint bench clean

# Quiet by default: the sign-in instructions, then warnings and errors only
# (BLOCKLIST_LOG_LEVEL=INFO make run shows every request and publication).
run: venv
	@BLOCKLIST_LOG_LEVEL=$${BLOCKLIST_LOG_LEVEL:-WARNING} $(BIN)/blocklist serve

test: venv peers
	$(BIN)/python -m pytest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[test]'
	@touch $@

peers:
	bash scripts/install-peers.sh

lint: venv
	$(BIN)/ruff check app workers client tests bench
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/import.py
	$(BIN)/python bench/publish.py
	$(BIN)/python bench/axfr.py
	$(BIN)/python bench/xot.py
	$(BIN)/python bench/resolver_latency.py
	$(BIN)/python bench/pull.py
	$(BIN)/python bench/entries_page.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
