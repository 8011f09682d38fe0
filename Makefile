# supportnet: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST: Debian's package where apt exists and we are root; else a verified download.
data: $(STAMP)
	@PY=$(PY) bash scripts/get-data.sh

demo: data
	$(VENV)/bin/supportnet compare --data fashion-mnist --model convnet-s --methods sgd,b-alt,i-alt \
		--epochs 3 --seed 0 --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: data
	$(PY) -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
