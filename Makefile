# Two entry points on a fresh machine (Python >= 3.11):
#   make demo   set up .venv and generate images with the default model
#   make test   set up .venv and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/personify: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(BIN)/personify

demo: setup
	$(BIN)/personify generate "a photo of a dog on the beach" --n 8 --out out/demo

# Tiny test models run faster on one thread: tests/test_contract.py took 13.6 s with
# OMP_NUM_THREADS=1 and 92.9 s with 2, measured back to back here with a training job on the other core.
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: setup demo test
