# xiaophi — every target installs what it needs first (through `install`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xiaophi-installed
RUN    ?= runs/tiny

.PHONY: install system-packages test test-fast lint format demo vllm bench-train bench-tokenizer bench-serve bench-rag bench-quality bench-tools bench-gguf bench-lora clean docker-smoke gpu-check gpu-wheels

install: $(STAMP)

# torch==2.13.0 goes in before anything that depends on torch: that pins the CPU wheel.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The Debian packages the tests need (Chromium, a CJK font, docker-compose): installed when
# missing, as root or through sudo; otherwise the script prints the command to run.
system-packages:
	bash tools/system_packages.sh

test: install system-packages
	$(PY) -m pytest -q

test-fast: install system-packages
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Demo corpora → tiny pipeline → demo knowledge base → server with the UI at /ui.
demo: install
	$(VENV)/bin/xiaophi-demo --run $(RUN)

# vLLM's CPU build serving a checkpoint (the demo's chat model by default) on VLLM_PORT. vLLM has a
# venv of its own outside the clone, made once per machine (see tools/vllm_env.py), so this needs
# no `install`. VLLM_ARGS: more vLLM flags, e.g. VLLM_ARGS="--host 0.0.0.0 --max-model-len 512".
VLLM_MODEL ?= $(RUN)/dpo
VLLM_PORT  ?= 8001
VLLM_NAME  ?= $(notdir $(abspath $(VLLM_MODEL)))
vllm:
	$(PYTHON) -m tools.vllm_env serve --model $(VLLM_MODEL) --name $(VLLM_NAME) --port $(VLLM_PORT) -- $(VLLM_ARGS)

bench-tokenizer: install
	$(PY) -m bench.tokenizer_bench

bench-train: install
	$(PY) -m bench.train_bench

# The tiny recipe's pretraining over a grid at one fixed FLOP budget, scored through lm-eval on
# the dev split (bits/char, cloze and letter accuracies), wall time beside each row.
bench-quality: install
	$(PY) -m bench.quality_bench $(QUALITY_ARGS)

# Tool use against SFT steps on the demo-sized model (valid/exact calls, F1 with the tool result,
# grounded and closed-book F1; the pretrained model as baseline), dev and test splits.
bench-tools: install
	$(PY) -m bench.tool_curve $(TOOLS_ARGS)

# SFT with a LoRA adapter beside full SFT from the same pretrained checkpoint (LORA_BASE)
LORA_BASE ?= runs/tiny/pretrain
bench-lora: install
	$(PY) -m bench.lora_bench --base $(LORA_BASE) $(LORA_ARGS)

# A checkpoint as GGUF in llama.cpp (f32, f16, q8_0, q4_k_m) beside transformers: sizes,
# held-out bits/char, greedy tokens/s, greedy agreement. GGUF_MODEL: a checkpoint or run folder.
GGUF_MODEL ?= $(RUN)
bench-gguf: install
	$(PY) -m bench.gguf_bench --model $(GGUF_MODEL) $(GGUF_ARGS)

bench-serve: install
	$(PY) -m bench.serve_bench

# BACKEND=postgres: the postgres backend beside the local one (bench/backend_bench.py)
BACKEND ?= local
bench-rag: install
ifeq ($(BACKEND),postgres)
	$(PY) -m bench.backend_bench $(BENCH_ARGS)
else
	$(PY) -m bench.rag_bench $(BENCH_ARGS)
endif

# The server under mixed load while its engine process is killed twice (BACKEND=postgres: and its
# KB database restarted once), bounded in time; exits 1 if a document was lost or a request
# failed other than retryably (bench/soak.py). SOAK_ARGS="--duration 120", for instance.
soak: install
	$(PY) -m bench.soak --run $(RUN) --backend $(BACKEND) $(SOAK_ARGS)

# Every GPU figure and check in one run of at most 8 minutes (see bench/gpu_check.py).
# Meant for a bare CUDA machine with torch + transformers + accelerate and no network, so it does
# not go through `install`: it uses the venv's Python when there is one, else python3.
# Extra flags: make gpu-check GPU_CHECK_ARGS="--smoke" (or "--out DIR/gpu_check.json").
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
# The recipe's pydantic models are the one package the check needs beyond torch/transformers/
# accelerate. A machine without pydantic gets it from .whl/ (`make gpu-wheels` here, with network;
# carry .whl along), installed into a scratch folder, never into that machine's environment.
gpu-check:
	@if $(GPU_PY) -c "import pydantic" 2>/dev/null || ! ls .whl/pydantic-*.whl >/dev/null 2>&1; then \
		$(GPU_PY) -m bench.gpu_check $(GPU_CHECK_ARGS); \
	else \
		site=$$(mktemp -d) && \
		$(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --target $$site .whl/*.whl && \
		PYTHONPATH=$$site$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m bench.gpu_check $(GPU_CHECK_ARGS); \
	fi

# pydantic and what it needs, as wheels for the GPU machine's Python (3.12, manylinux x86_64), at
# the versions this venv runs.
GPU_WHEELS = pydantic pydantic-core annotated-types typing-inspection typing-extensions
gpu-wheels: install
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(PY) -c "import importlib.metadata as m; print(*(f'{n}=={m.version(n)}' for n in '$(GPU_WHEELS)'.split()))")

# The compose stack for real (root; installs docker.io/docker-compose/debootstrap when missing,
# starts and stops its own dockerd, builds a local base image): see docker/smoke.sh.
docker-smoke: install
	PY=$(PY) bash docker/smoke.sh

clean:
	rm -rf runs data bench_out
