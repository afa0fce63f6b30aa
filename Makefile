# Entry points: `make run` (install, then the whole pipeline on the embedded default), `make real` (the guide's
# Qwen2.5-7B run on GPUs, profiles/qwen2.5-7b-guide.yaml), `make test` (install what the tests need, then lint
# and the fast tier), `make test-all` (everything; what CI runs). Everything
# goes into a project virtual environment, .venv/ — `source .venv/bin/activate` before running dvc yourself:
# the stages' commands call `python`, which must be the venv's.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_CPP_VERSION := 0.3.36
# torch is installed first and alone, the build this machine's index gives (CPU here, CUDA on a GPU box); every
# other package comes from the lock files, hash-checked (tools/lock.py; `python -m tools.lock --check` keeps
# this pin equal to requirements.txt's)
TORCH_VERSION := 2.13.0
SDIST_DIR := $(VENV)/sdist
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
PROFILE ?= profiles/qwen2.5-7b-guide.yaml
# The columns `make exps` keeps of `dvc exp show`'s ~390 (every param and metric leaf): the knobs most often
# swept and the headline metrics. --keep matches the start of a column name.
EXPS_KEEP := Experiment|lr|sft\.method|sft\.lora\.r|dpo\.beta|.*eval\.loss|task\.(sft|dpo|gguf_q4_k_m)|quantization\..*ppl_ratio
EXPS_ARGS ?=

.PHONY: run real test test-all install install-test services lint report exps bench lock clean-venv

export PATH := $(abspath $(BIN)):$(PATH)

run: $(STAMP)
	dvc repro

# The guide's real run (Qwen2.5-7B-Instruct, LoRA on 4 GPUs under ZeRO-2, DPO, export, eval) as one experiment:
# `dvc exp run -S ...` with every value of $(PROFILE). Check a profile anywhere first (no GPU, no download):
# python -m tools.profile check $(PROFILE). docs/real-models.md has the memory per stage and the multi-node launch.
real: $(STAMP)
	python -m tools.profile run $(PROFILE)

# The fast tier: unit tests and one reduced pipeline run (tests marked `pipeline` are left to test-all).
test: $(STAMP) $(TEST_STAMP) services lint
	python -m pytest -m "not pipeline" $(PYTEST_ARGS)

# Everything, with the slowest tests listed at the end: what .ci/run calls.
test-all: $(STAMP) $(TEST_STAMP) services lint
	python -m pytest --durations=25 $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# System packages the tests start as real servers (sshd, Chromium); installs only what is missing.
services:
	bash .ci/services.sh

install: $(STAMP)
install-test: $(TEST_STAMP)

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "error: '$(PYTHON) -m venv' failed; install python3-venv (Debian) and retry" >&2; exit 1; fi; }
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and alone (--no-deps: its dependencies are in the lock), so that no other requirement can pull a
# (multi-GB) CUDA build on a CPU box; then everything else from requirements.lock, every file checked against its
# sha256 (pip's hash-checking mode). CMAKE_ARGS is how llama-cpp-python's build takes options: GGML_NATIVE=OFF,
# because the native build segfaults on quantized models on AMX CPUs (DESIGN.md); on a GPU box add
# -DGGML_CUDA=on. The llama-cpp-python sdist is downloaded once: pip builds the runtime from it, and
# ta/export/llama_cpp.py extracts llama.cpp's own GGUF converter from the same file.
# The project itself (ta, stages, serve) is installed in editable mode, without dependencies.
$(STAMP): requirements.lock pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install -q --no-deps torch==$(TORCH_VERSION)
	@test -f $(SDIST_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz || \
	  $(BIN)/pip download -q --no-deps --no-binary :all: -d $(SDIST_DIR) llama-cpp-python==$(LLAMA_CPP_VERSION)
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(BIN)/pip install -q --require-hashes -r requirements.lock \
	  --find-links $(SDIST_DIR)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m ta.export.llama_cpp --sdist $(SDIST_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
	# DeepSpeed compiles its CPU shared-memory collective on first use (~1 min); build it once here
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()"
	touch $@

$(TEST_STAMP): requirements-test.lock $(STAMP)
	$(BIN)/pip install -q --require-hashes -r requirements-test.lock
	touch $@

# Re-resolve the lock files after changing a pin in requirements*.txt (needs the package index), with pinned
# pip-tools and uv in a throwaway venv; also rewrites libraries.yaml. LOCK_ARGS=--upgrade moves every
# unpinned dependency to its newest release.
LOCK_ARGS ?=
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q pip-tools==7.7.0 uv==0.13.9 pyyaml
	PATH=$(abspath .venv-lock/bin):$$PATH .venv-lock/bin/python -m tools.lock $(LOCK_ARGS)

report: $(TEST_STAMP)
	$(BIN)/python -m tools.pr_report

# Runs and experiments side by side, in the columns worth comparing them by; EXPS_ARGS passes options on to
# `dvc exp show` (--csv, --md, -A for every commit, --sort-by task.dpo).
exps: $(STAMP)
	dvc exp show --drop '.*' --keep '$(EXPS_KEEP)' $(EXPS_ARGS)

# The benchmarks (bench/): each rewrites its section of BENCHMARKS.md; BENCH_ARGS passes options on to
# `python -m bench` (--only runtime, --repeat 5, --workspace DIR). Never part of `make test`.
BENCH_ARGS ?=
bench: $(STAMP)
	python -m bench $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
