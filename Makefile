# supportnet: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build on this machine's disk, and
# installing it first keeps pip from pulling a multi-GB CUDA build for the package's torch range.
TORCH  := torch==2.13.0
# gpu: triton, for the kernel tests under its interpreter (tests/test_kernels.py); ~290 MB wheel, ~1 GB installed
EXTRAS := dev,images,svhn,plots,tensorboard,lightning,onnx,gpu,docs,optim

.PHONY: setup data demo test check test-all lint docs docs-check docs-deps bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' $(TORCH)
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST: Debian's package where apt exists and we are root; else a verified download.
data: $(STAMP)
	@PY=$(PY) bash scripts/get-data.sh

demo: data
	$(VENV)/bin/supportnet compare --data fashion-mnist --model convnet-s --methods sgd,b-alt,i-alt \
		--epochs 3 --seed 0 --out runs/demo --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts examples
	$(VENV)/bin/ruff format --check src tests bench scripts examples
	$(VENV)/bin/lint-imports --no-cache

# The documentation site (mkdocs.yml, docs/): `make docs` builds it into site/, `make docs-check`
# into a temporary folder that it removes. `mkdocs build --strict`: a warning, a broken link or
# anchor, or a docstring mkdocstrings cannot render fails the build. The `docs` extra
# (mkdocs-material, mkdocstrings-python) is installed into .venv first if it is missing.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs
docs-deps: $(STAMP)
	@$(PY) -c "import material, mkdocstrings_handlers.python" 2>/dev/null || \
		$(PY) -m pip install --quiet -e '.[docs]' $(TORCH)

docs: docs-deps
	$(MKDOCS) build --strict --site-dir site
	@echo "documentation: site/index.html"

docs-check: docs-deps
	@tmp=$$(mktemp -d) && $(MKDOCS) build --strict --quiet --site-dir "$$tmp"; rc=$$?; rm -rf "$$tmp"; exit $$rc

# Two workers, one test file each at a time (--dist loadfile: a file's module fixtures are built
# once), taking the files in the order tests/conftest.py gives them, the longest first
# (--no-loadscope-reorder); each worker gets one torch thread of the two cores (conftest).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

# Every test (CI: .ci/run).
test: $(STAMP) lint
	$(PY) -m pytest -q $(XDIST) tests

# The edit-test loop, about a minute on two cores: lint, then the tests that start no other
# process and are not slow (the marks: tests/conftest.py). `make test` runs the rest too.
check: $(STAMP) lint
	$(PY) -m pytest -q $(XDIST) -m "not slow and not integration" tests

test-all: data
	$(PY) -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
