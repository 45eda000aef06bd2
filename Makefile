# `make demo` and `make test` install what they need first (scripts/setup.sh), then run.
PY ?= python3

.PHONY: setup demo test lint typecheck
setup:
	@bash scripts/setup.sh

demo: setup
	idsync demo

test: setup lint typecheck
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy
