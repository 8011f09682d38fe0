# supportnet: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build on this machine's disk, and
# installing it first keeps pip from pulling a multi-GB CUDA build for the package's torch range.
TORCH  := torch==2.13.0
# gpu: triton, for the kernel tests under its interpreter (tests/test_kernels.py); ~290 MB wheel, ~1 GB installed
EXTRAS := dev,images,svhn,plots,tensorboard,lightning,onnx,gpu

.PHONY: setup data demo test check test-all lint docs bench clean

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

# The API reference, generated from the docstrings into docs/api/ (not committed).
API_MODULES := supportnet supportnet.layers supportnet.train supportnet.guard \
	supportnet.loggers supportnet.lightning supportnet.masks supportnet.config \
	supportnet.choices supportnet.data supportnet.models supportnet.io supportnet.errors supportnet.dsd \
	supportnet.compare supportnet.study supportnet.distributed supportnet.theory
docs: $(STAMP)
	$(VENV)/bin/python scripts/build_api_docs.py docs/api $(API_MODULES)
	@echo "API reference: docs/api/index.html"

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
