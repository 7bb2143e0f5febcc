.PHONY: dev test check format

dev:
	python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[dev]"

test: check
	python -m pytest

check:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .
