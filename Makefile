# A newcomer's two commands: `make demo` and `make test`. Both install everything into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.convrepair-installed
FIXTURES := fixtures/out
FIXTURE_STAMP := $(FIXTURES)/.built
# torch first and pinned: pip would otherwise pull a multi-GB CUDA build (see README).
TORCH  := torch==2.13.0
# Two workers, one test file each at a time: many end-to-end tests wait on servers and daemons.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=25

.PHONY: demo test install fixtures clean bench bench-zoo

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# onnx2tf imports tf_keras, whose wheel requires the `tensorflow` distribution (not tensorflow-cpu): the
	# release matching the installed TensorFlow, without its dependencies (docs/ROUTES.md, onnx2tf)
	$(BIN)/python -m pip install --quiet --no-deps "$$($(BIN)/python -c 'import tensorflow as tf; print("tf-keras~=" + tf.__version__.rsplit(".", 1)[0] + ".0")')"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt litert-torch litert-converter  # their xdsl pin conflicts with model-signing; conversion never imports xdsl (docs/ROUTES.md)
	touch $@

fixtures: $(FIXTURE_STAMP)

$(FIXTURE_STAMP): fixtures/build.py $(STAMP)
	$(BIN)/python fixtures/build.py --out $(FIXTURES)
	touch $@

demo: $(FIXTURE_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash fixtures/demo.sh $(FIXTURES) demo-out

test: $(FIXTURE_STAMP)
	CONVREPAIR_FIXTURES=$(abspath $(FIXTURES)) $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(FIXTURE_STAMP)
	$(BIN)/python bench/check_bench.py --fixtures $(FIXTURES)
	$(BIN)/python bench/pso_bench.py --fixtures $(FIXTURES)
	$(BIN)/python bench/executor_bench.py --fixtures $(FIXTURES)

# The model zoo (bench/zoo): cost ratios and the fault matrix; ZOO_ARGS="--size full" for full sizes.
bench-zoo: $(STAMP)
	$(BIN)/python bench/zoo_bench.py $(ZOO_ARGS)

clean:
	rm -rf $(FIXTURES) demo-out .pytest_cache
