# Set-up on a fresh machine is two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,demo,benchmarks]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m linearised_laplace.demo

# pytest exits with 5 when it collects no tests; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

benchmarks: $(STAMP)
	$(PY) benchmarks/sampler_convergence.py
	$(PY) benchmarks/tangent_batching.py
	$(PY) benchmarks/em_trajectory.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
