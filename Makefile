# Two set-up commands (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-fast bench clean protos argo images-test

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "install [1/4] virtual environment $(VENV) ($(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	@echo "install [2/4] torch $(TORCH_VERSION), CPU build (about 1 min from the local wheel)"
	# the CPU build of torch first (on disk on the dev machines); a bare range would pull CUDA
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	@echo "install [3/4] htvs and its dependencies: pymatgen, CHGNet, aviary, grpcio, onnxruntime, ... (about 5-8 min on a fresh machine)"
	$(BIN)/python -m pip install --quiet -e '.[all,codegen,test]'
	@echo "install [4/4] gRPC stubs from protos/"
	$(BIN)/python -m htvs.grpc.codegen
	touch $(STAMP)
	@echo "install done: $(VENV)"

## The main job on the embedded default (no cluster): the demo campaign, then known windows.
demo: $(STAMP)
	$(BIN)/htvs campaign run configs/demo.yaml --out $(DEMO_OUT)
	$(BIN)/htvs campaign plot $(DEMO_OUT)
	# the same predictions under the probabilistic rule (P >= 0.5 that every condition holds), beside the paper's
	$(BIN)/htvs screen --predictions $(DEMO_OUT)/predictions.parquet --out $(DEMO_OUT)/screen-probabilistic --rule probabilistic --min-probability 0.5
	$(BIN)/htvs window Li7La3Zr2O12 Li3PS4 Li10GeP2S12 Li6PS5Cl Li3InCl6 Li3PO4 Li3ClSO4

## gRPC stubs from protos/htvs/v1 (also done by install; never edit the generated files).
protos: $(STAMP)
	$(BIN)/python -m htvs.grpc.codegen

## Render the Argo WorkflowTemplate (argo/campaign.yaml and the chart's copy) from argo/campaign.py.
argo: $(STAMP)
	$(BIN)/python argo/campaign.py

## The whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## Benchmarks (minutes; results go to BENCHMARKS.md by hand with date and command).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_substitution.py
	$(BIN)/python benchmarks/bench_thermo.py
	$(BIN)/python benchmarks/bench_composition_inference.py
	$(BIN)/python benchmarks/bench_grpc_load.py

## Build the light and full images with podman and smoke-test every service (root; 16-25 min; before
## each release, not in CI). IMAGES_TEST_ARGS, e.g. --skip-build or --dry-run; see --help.
IMAGES_TEST_ARGS ?=
images-test: $(STAMP)
	$(BIN)/python docker/images_test.py $(IMAGES_TEST_ARGS)

clean:
	rm -rf $(VENV) .venv-helm $(DEMO_OUT) .pytest_cache build src/*.egg-info
