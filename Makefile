# Two commands for a new user: `make demo` and `make test`. Both set up .venv idempotently.
PYTHON ?= python3
VENV ?= .venv
# This platform resolves these from local disk (x86_64, Python 3.11); override elsewhere,
# e.g. `make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" test` on aarch64.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltbench-installed

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

# Re-run the install only when pyproject.toml or this Makefile change.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ltbench demo

test: $(STAMP)
	$(VENV)/bin/ltbench fetch fashion-mnist
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
