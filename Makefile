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

# Tiny test models are faster on one thread (measured: the suite takes ~1/5 of the time on a busy
# 2-core machine); the 2-process test starts its own processes.
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: setup demo test
