# Shortcuts for people who type make: each target is one line of bootstrap.py, which holds the
# setup itself (Python only, so a machine without make runs the README's commands as they are).

PYTHON ?= python3
# `make demo TASK=chat`, or TASK="classify --headless" to run it straight through here
TASK ?=
JOBS ?= 2

.PHONY: demo test setup setup-dev check format

demo:
	$(PYTHON) bootstrap.py demo $(TASK)
test:
	$(PYTHON) bootstrap.py test --jobs $(JOBS)
setup:
	$(PYTHON) bootstrap.py setup
setup-dev:
	$(PYTHON) bootstrap.py setup-dev
check:
	$(PYTHON) bootstrap.py check
format:
	$(PYTHON) bootstrap.py format
