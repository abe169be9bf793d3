# Set-up on a fresh machine is two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo data test lint format benchmarks readme peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[experiments,test,pinned,hf]"
	# curvlinops (KFAC) without its declared backpack, whose torchvision does not import here
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt einops==0.8.2 einconv==0.1.0 \
		opt-einsum==3.4.0 linear_operator==0.6.1
	$(PY) -m pip install --quiet --no-deps curvlinops-for-pytorch==3.0.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lla demo

# Fashion-MNIST for the benchmarks, from Debian's package (no download at run time).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
		|| echo "could not install dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist"; \
	else echo "Fashion-MNIST needs Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)"; fi

# pytest exits with 5 when it collects no tests; that is not a failure of the suite.
# One thread per process: the tests are small problems, and on a busy 2-core machine two threads
# per process made the suite 7× slower (21 min against 3 min, measured on fresh clones).
test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

benchmarks: $(STAMP) data
	$(PY) benchmarks/solver_fidelity.py
	$(PY) benchmarks/solver_fidelity.py --problems fashion-cnn-n2000 --samples 16 --name solver_fidelity-fashion
	$(PY) benchmarks/solver_fidelity.py --solvers SDD --problems small-noise-mlp,sinusoid-n300,diabetes-mlp --name solver_fidelity-sdd
	$(PY) benchmarks/sampler_convergence.py
	$(PY) benchmarks/tangent_batching.py
	$(PY) benchmarks/em_trajectory.py
	$(PY) benchmarks/siblings.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/readme.py

# The README's figures (and results pages' marked notes) from the committed results; `make test`
# checks that they agree. Also lists results files made before a later change to their code.
readme: $(STAMP)
	$(PY) benchmarks/readme.py

# Optional peers for the benchmarks: laplace-torch 0.3 next to the CPU torch (transformers, for
# the ResNet-18 scaling case and the LoRA benchmark, comes with the hf extra). Three packages need
# --no-deps because they declare torchvision, which does not import with this torch (and makes
# torchmetrics, hence laplace, fail to import when present); their other dependencies go first,
# so that no install runs pip's dependency check against a package that declares torchvision.
peers: $(STAMP)
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt asdfghjkl==0.1a4 opt-einsum==3.4.0 \
		torchmetrics==1.9.0 einops==0.8.2 unfoldNd==0.2.3 einconv==0.1.0 linear_operator==0.6.1
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt --no-deps \
		laplace-torch==0.3 backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
