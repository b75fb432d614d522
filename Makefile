# Ember: build, fetch the default model, answer a prompt, run every test.
#
#   make run                      build (release), fetch SmolLM2-135M, answer $(PROMPT)
#   make run PROMPT="..." MAX_TOKENS=128
#   make test                     what CI runs: prerequisites, model, cargo test --workspace --release,
#                                 the Python package's and the server's tests
#   make model                    fetch (or verify) the default model only
#   make device-kit               what scripts/device-check runs on a lent GPU machine (no Rust there)
#
# The model cache is $EMBER_HOME (default ~/.cache/ember); tests find the model through
# $EMBER_TEST_MODEL, exported below.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
PROMPT ?= Write a haiku about the Rust programming language.
MAX_TOKENS ?= 64

EMBER_HOME ?=
ifeq ($(strip $(EMBER_HOME)),)
EMBER_HOME := $(HOME)/.cache/ember
endif
export EMBER_HOME
DEFAULT_MODEL := $(EMBER_HOME)/models/SmolLM2-135M-Instruct.Q4_1.gguf
export EMBER_TEST_MODEL ?= $(DEFAULT_MODEL)
EMBER := ./target/release/ember

.PHONY: help build run test prereqs model pyenv test-python test-server

help:
	@sed -n '2,10s/^# \{0,1\}//p' Makefile

build:
	$(CARGO) build --release -p ember-cli

run: build model
	$(EMBER) run --max-tokens $(MAX_TOKENS) "$(PROMPT)"

# Every suite runs even when an earlier one fails; the target fails if any did.
test: prereqs model cuda-toolchain
	status=0; \
	EMBER_REQUIRE_WGPU=1 $(CARGO) test --workspace --release --no-fail-fast || status=1; \
	EMBER_REQUIRE_WGPU=1 $(CARGO) test --release -p ember-kernels --features wgpu --test backend || status=1; \
	EMBER_REQUIRE_NVRTC=1 LD_LIBRARY_PATH=$(CUDA_NVIDIA)/cuda_nvrtc/lib:$${LD_LIBRARY_PATH:-} PATH=$(CUDA_NVIDIA)/cuda_nvcc/bin:$$PATH $(CARGO) test --release -p ember-kernels --features cuda --test cuda_compile || status=1; \
	$(MAKE) --no-print-directory test-python || status=1; \
	$(MAKE) --no-print-directory test-server || status=1; \
	exit $$status

# The CUDA compile check's toolchain from PyPI, no GPU or CUDA install needed: NVRTC (libnvrtc,
# loaded by cudarc at run time), the runtime headers, and ptxas. Installed once into
# $(CUDA_VENV); CUDA_NVIDIA is its site-packages/nvidia folder (a shell expression for recipes).
CUDA_VENV := $(CURDIR)/target/cuda-venv
CUDA_NVIDIA = $$($(CUDA_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
CUDA_PACKAGES := nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86
.PHONY: cuda-toolchain
cuda-toolchain: prereqs
	@test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	@test -f $(CUDA_NVIDIA)/cuda_nvrtc/lib/libnvrtc.so.12 -a -x $(CUDA_NVIDIA)/cuda_nvcc/bin/ptxas \
	  || $(CUDA_VENV)/bin/python -m pip install -q --disable-pip-version-check $(CUDA_PACKAGES)

# A virtual environment with the Python test tools (bindings/requirements-test.txt).
PYENV := $(CURDIR)/target/pyenv
pyenv: prereqs
	@test -x $(PYENV)/bin/python || $(PYTHON) -m venv $(PYENV)
	$(PYENV)/bin/python -m pip install -q --disable-pip-version-check -r bindings/requirements-test.txt

# The Python package (bindings/python): build the abi3 wheel, install it into a fresh virtual
# environment (what `pip install` gives a user), run its tests from outside the source tree.
PYTEST_VENV := $(CURDIR)/target/pytest-venv
test-python: pyenv model
	rm -rf $(PYTEST_VENV) target/wheels/ember_llm-*.whl
	$(PYENV)/bin/maturin build --release -m bindings/python/Cargo.toml -o target/wheels
	$(PYTHON) -m venv $(PYTEST_VENV)
	$(PYTEST_VENV)/bin/python -m pip install -q --disable-pip-version-check target/wheels/ember_llm-*.whl \
	  "$$(grep '^pytest==' bindings/requirements-test.txt)"
	cd $(PYTEST_VENV) && ./bin/python -m pytest -p no:cacheprovider -v --durations=5 $(CURDIR)/bindings/python/tests

# The server driven by the openai package (its Rust tests run in `cargo test --workspace`).
test-server: pyenv model
	EMBER_BIN=$(CURDIR)/target/release/ember $(PYENV)/bin/python -m pytest -s -v bindings/server/tests

# Rust (cargo), python3 with pip (model download), and Mesa's lavapipe for the wgpu tests (apt).
prereqs:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; it is needed to download models" >&2; exit 1; }
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m ensurepip --upgrade --default-pip \
	  || { echo "make: '$(PYTHON) -m pip' is missing and ensurepip failed; install pip" >&2; exit 1; }
	@# The wgpu backend's tests run on Mesa's lavapipe (Vulkan on the CPU) where there is no GPU.
	@if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 \
	    || { echo "make: installing lavapipe (mesa-vulkan-drivers libvulkan1) failed" >&2; exit 1; }; \
	fi

# The kit scripts/device-check runs on a lent GPU machine, which has no Rust: stripped release
# binaries (ember, the backend parity tests, the hybrid tests), the calibration corpus, and the
# synthetic 7B ReLU model's profile (made here once: synth ~3 min, profile ~40 min on 2 cores;
# the device re-synthesizes the same model from the options in synth-7b.args, written with the
# profile, and checks the sha256).
KIT := .device-kit
DATA_DIR ?= $(CURDIR)/../shared/data
KIT_MODEL := target/device-kit/synth-7b-relu-q4_0.gguf
KIT_SYNTH := --shape 7b --act relu --sparsity 0.9 --quant q4_0
KIT_BIN := target/device-kit/bin
.PHONY: device-kit
device-kit: build
	rm -rf $(KIT_BIN) && mkdir -p $(KIT_BIN) $(KIT)/data
	install -s $(EMBER) $(KIT_BIN)/ember
	@for t in "ember-kernels --features wgpu,cuda --test backend" "ember-engine --test hybrid"; do \
	  exe=$$($(CARGO) test --release -p $$t --no-run --message-format=json 2>/dev/null \
	    | $(PYTHON) -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])'); \
	  echo "install -s $$exe"; install -s "$$exe" $(KIT_BIN)/$$(basename "$${exe%-*}"); \
	done
	@# The device tool carries at most 64 MiB: the binaries travel xz-compressed (a third of it).
	tar -C $(dir $(KIT_BIN)) -cJf $(KIT)/bin.tar.xz bin
	cp $(DATA_DIR)/tinyshakespeare.txt $(KIT)/data/
	$(MAKE) --no-print-directory $(KIT)/synth-7b.profile.safetensors
	du -sh $(KIT)

$(KIT)/synth-7b.profile.safetensors:
	mkdir -p $(dir $(KIT_MODEL)) $(KIT)
	test -f $(KIT_MODEL) || $(EMBER) synth $(KIT_SYNTH) -o $(KIT_MODEL)
	echo "$(KIT_SYNTH)" > $(KIT)/synth-7b.args
	sha256sum $(KIT_MODEL) > $(KIT)/synth-7b.sha256
	$(EMBER) profile -m $(KIT_MODEL) --corpus $(DATA_DIR)/tinyshakespeare.txt --ctx 128 --tokens 1024 \
	  --samples 1024 --heldout 256 --predictors -o $@

# `ember pull` downloads the default model once (python3 -m pip, then sha256-checked) and
# verifies it on every later call.
model: prereqs build
	$(EMBER) pull
	@test -f "$(DEFAULT_MODEL)" || { echo "make: ember pull did not produce $(DEFAULT_MODEL)" >&2; exit 1; }
