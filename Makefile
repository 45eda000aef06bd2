# `make demo` and `make test` install what they need first (scripts/setup.sh), then run.
PY ?= python3

.PHONY: setup demo test lint typecheck native native-clean
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

# Optional: the engine compiled with mypyc (about half the CPU of its steps; docs/benchmarks.md).
native:
	$(PY) scripts/compile_engine.py

native-clean:
	$(PY) scripts/compile_engine.py --clean
