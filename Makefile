# The README's two commands: `make serve` and `make test`. Each installs what it needs first.
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8080
PYTHON ?= python3

.PHONY: serve test lint bench redis-server mutate

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/parley serve --host $(HOST) --port $(PORT)

# The tests start their own PostgreSQL (pgserver) and redis-server; the latter comes from Debian.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

test: $(VENV)/.installed redis-server
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check services agents db tests bench
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/agents.py

# Mutation testing of services/inbound, services/channels and agents/worker.py ([tool.mutmut] in
# pyproject.toml); `make mutate MUTATE_ARGS=--max-children=1` to leave a core free.
$(VENV)/.mutation-installed: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet -e '.[test,mutation]'
	touch $@

mutate: $(VENV)/.mutation-installed redis-server
	$(VENV)/bin/python tests/mutate.py $(MUTATE_ARGS)
