# Two commands do everything: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Which torch to install. The declared requirement is a range so each machine gets its own
# build (CUDA, ROCm, CPU). On a CPU-only machine, `make demo CPU=1` takes PyTorch's CPU
# wheel index instead (a few hundred MB rather than several GB); TORCH_INDEX names any other
# index. Changing TORCH, TORCH_INDEX or CPU reinstalls torch on the next make.
TORCH  ?= torch>=2.9
CPU    ?=
TORCH_INDEX ?= $(if $(CPU),https://download.pytorch.org/whl/cpu,)
TORCH_CHOICE := $(TORCH) $(TORCH_INDEX)

STDLIB  = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
CORPUS ?= $(wildcard $(STDLIB)/*.py)
DEMO   ?= .demo
DEMO_RUN ?= checkpoints/demo
DEMO_TIME ?= 180

.PHONY: demo test lint bench clean torch-choice

# The torch choice is remembered in .venv/.torch; a different choice reinstalls torch. A
# torch already in .venv with no record (put there by hand, or by CI) is kept.
torch-choice:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -f $(VENV)/.torch ] && [ "$$(cat $(VENV)/.torch)" != "$(TORCH_CHOICE)" ]; then \
		echo "torch choice changed to '$(TORCH_CHOICE)': reinstalling torch"; \
		$(PY) -m pip install --force-reinstall --no-deps "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) && \
		$(PY) -m pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) && \
		echo "$(TORCH_CHOICE)" > $(VENV)/.torch && rm -f $(VENV)/.installed; \
	elif ! $(PY) -c 'import torch' 2>/dev/null; then \
		echo "installing $(TORCH) (this can be a large download; make CPU=1 takes the CPU-only build)"; \
		$(PY) -m pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) && \
		echo "$(TORCH_CHOICE)" > $(VENV)/.torch; \
	fi

$(VENV)/.installed: pyproject.toml | torch-choice
	$(PY) -m pip install -q -e '.[test,plot,hf,serve,track]'
	touch $@

demo: torch-choice $(VENV)/.installed
	@echo "gpt-prepare $(if $(filter $(origin CORPUS),file),<the Python standard library's *.py files>,$(CORPUS)) --out $(DEMO)/data --force"
	@$(VENV)/bin/gpt-prepare $(CORPUS) --out $(DEMO)/data --force
	$(VENV)/bin/gpt-train --data $(DEMO)/data --out $(DEMO_RUN) --preset cpu-small --max-time $(DEMO_TIME) --overwrite
	$(VENV)/bin/gpt-sample --ckpt $(DEMO_RUN) --max-new-tokens 300 --prompt "def "
	@echo "the run is in $(DEMO_RUN); sample again with: $(VENV)/bin/gpt-sample --prompt 'def '"

# one worker per core (pytest-xdist); a file's tests stay in one worker, which builds its
# module fixtures (a trained model, a prepared corpus) once
test: torch-choice $(VENV)/.installed
	$(PY) -m pytest -n auto --dist loadfile tests

# ruff, configured in pyproject.toml ([tool.ruff]); installed with the test extra
lint: torch-choice $(VENV)/.installed
	$(PY) -m ruff check .

# The benchmarks are modules of the bench package, which is not installed: `-m` finds it in the
# repository root, make's working directory.
bench: torch-choice $(VENV)/.installed
	$(PY) -m bench.prepare_bench ../shared/corpora/owt-sample
	$(PY) -m bench.train_bench
	$(PY) -m bench.sample_bench

# Start over: the environment (torch included), the demo's data and its run.
clean:
	rm -rf $(VENV) $(DEMO) $(DEMO_RUN) build *.egg-info
