# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv once
# (the stamp file makes a second run skip the install) and then do their job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Which torch build: auto (PyPI's CUDA build where nvidia-smi finds a GPU, else the CPU-only
# build when its index answers, else PyPI's, which runs on the CPU too), cpu or cuda.
# tools/torch_index.py says why; TORCH_CPU_INDEX points cpu at a mirror of PyTorch's CPU index.
TORCH ?= auto
TORCH_CPU_INDEX ?=

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned: the releases this project is built and tested against;
	# the project's install then adds what they need (from the CPU build: no nvidia-*, no triton)
	options="$$($(PY) tools/torch_index.py '$(TORCH)' '$(TORCH_CPU_INDEX)')" && \
	$(PY) -m pip install --quiet $$options torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fmcache demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV)
