# Two commands for a fresh machine:
#   make demo   bake a throwaway project, install it, run its pipeline on the sample digits
#   make test   run this repository's tests
#   make bench  measure the generated project against bare baselines (BENCHMARKS.md);
#               BENCH_ARGS="--only P7" picks benchmarks
PYTHON ?= python3
VENV := .venv
POETRY_VENV := .venv-poetry
TORCH := torch==2.14.1 torchvision==0.29.1
BENCH_ARGS ?=

.PHONY: demo test bench lint clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

$(POETRY_VENV)/.installed: requirements-poetry.txt
	$(PYTHON) -m venv $(POETRY_VENV)
	$(POETRY_VENV)/bin/pip install --quiet -r requirements-poetry.txt
	touch $@

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo.sh

test: $(VENV)/.installed $(POETRY_VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" POETRY="$(CURDIR)/$(POETRY_VENV)/bin/poetry" \
		$(VENV)/bin/python -m pytest

bench: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(POETRY_VENV)
