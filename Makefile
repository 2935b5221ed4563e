# Two commands do everything: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The declared requirement is a range so each machine gets its own build (CUDA, ROCm, CPU).
# On a CPU-only machine a smaller build can be chosen, e.g. TORCH='torch==2.13.0'.
TORCH  ?= torch>=2.6

STDLIB  = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
CORPUS ?= $(wildcard $(STDLIB)/*.py)
DEMO   ?= .demo
DEMO_TIME ?= 180

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	@echo "gpt-prepare $(if $(filter $(origin CORPUS),file),<the Python standard library's *.py files>,$(CORPUS)) --out $(DEMO)/data --force"
	@$(VENV)/bin/gpt-prepare $(CORPUS) --out $(DEMO)/data --force
	$(VENV)/bin/gpt-train --data $(DEMO)/data --out $(DEMO)/run --preset cpu-small --max-time $(DEMO_TIME) --overwrite
	$(VENV)/bin/gpt-sample --ckpt $(DEMO)/run --max-new-tokens 300 --prompt "def "

test: $(VENV)/.installed
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) bench/prepare_bench.py ../shared/corpora/owt-sample
	$(PY) bench/train_bench.py
	$(PY) bench/sample_bench.py

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
