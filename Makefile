# Two commands for a new user: `make demo` and `make test`. Both set up .venv idempotently.
PYTHON ?= python3
VENV ?= .venv
# This platform resolves these from local disk (x86_64, Python 3.11); override elsewhere,
# e.g. `make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" test` on aarch64.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ltbench-installed
# The local SLURM test cluster (slurm/cluster.sh): its state, configs and logs live here (under /tmp:
# a unix socket path must stay short; one directory per checkout, so clones do not share a cluster).
SLURM_STATE ?= /tmp/ltbench-slurm-$(shell echo $(CURDIR) | cksum | cut -d' ' -f1)
NO_CHROMIUM := install it as root (apt-get install -y chromium), then make test again

.PHONY: demo test test-fast lint venv clean cluster-up cluster-down gpu-check gpu-wheels

venv: $(STAMP)

# Re-run the install only when pyproject.toml or this Makefile change.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ltbench demo

# The whole suite, with a real single-host SLURM cluster started before and stopped after (even when
# a test fails), and Chromium for the HTML table's browser test (installed from Debian when missing, as
# root); tests that need them fail rather than skip under LTBENCH_REQUIRE_SLURM=1 / LTBENCH_REQUIRE_BROWSER=1.
# Two pytest-xdist workers take a test file each at a time (module fixtures are built once), the longest files
# first (tests/conftest.py HEAVY_FIRST): while one waits on the SLURM scheduler or on a subprocess importing
# torch, the other computes, and both finish together.
test: $(STAMP)
	$(VENV)/bin/ltbench fetch fashion-mnist
	command -v chromium >/dev/null || { test "$$(id -u)" = 0 || { echo "make test: no Chromium, not root: $(NO_CHROMIUM)" \
		>&2; exit 1; }; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	slurm/cluster.sh start $(SLURM_STATE)
	SLURM_CONF=$(SLURM_STATE)/slurm.conf LTBENCH_REQUIRE_SLURM=1 LTBENCH_REQUIRE_BROWSER=1 \
		$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15; \
	status=$$?; slurm/cluster.sh stop $(SLURM_STATE); exit $$status

cluster-up:
	slurm/cluster.sh start $(SLURM_STATE)

cluster-down:
	slurm/cluster.sh stop $(SLURM_STATE)

# The one-shot GPU check (docs/distributed.md, "The GPU check"): on a bare GPU machine, with the python that has torch,
# torchvision and timm. It needs no venv and no network: webdataset and braceexpand, and for the foundation
# part peft with what importing it needs beyond timm's own dependencies (transformers, accelerate,
# tokenizers, regex, psutil), come from wheels in .whl/ (made by `make gpu-wheels` on a machine with PyPI
# access, then copied along; ~19 MB). Installed into GPU_SITE, which comes before the machine's own packages.
# Writes gpu-check/perf.md and perf.json, in at most GPU_BUDGET_S seconds plus the final end-to-end runs.
GPU_PYTHON ?= python3
GPU_BUDGET_S ?= 420
GPU_SITE ?= /tmp/ltbench-gpu-site
# more `ltbench perf` options, e.g. GPU_ARGS="--gpu-parts models --gpu-models resnet50"
GPU_ARGS ?=
gpu-check:
	if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile \
		--upgrade --target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(CURDIR):$(GPU_SITE) PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m bench perf --only gpu --out gpu-check \
		--budget-s $(GPU_BUDGET_S) $(GPU_ARGS)

# The wheels for the GPU machine's Python (3.12 on the H200 machines of BENCHMARKS.md; regex's wheel is built
# per Python version, the others are pure Python or abi3). peft imports transformers and accelerate at its top
# level; transformers' import needs regex and tokenizers (without tokenizers it fails on a type annotation) and
# checks the versions of huggingface_hub (>= 1.31) and safetensors (>= 0.8), which timm brings: carry them too
# (GPU_WHEELS_MORE, with their own needs) on a machine whose are older. psutil: required by peft and
# accelerate, not imported to inject LoRA; 0.2 MB.
GPU_PY_VERSION ?= 3.12
GPU_WHEELS_MORE ?=
GPU_WHEELS := webdataset==1.0.2 braceexpand==0.1.7 peft==0.21.0 transformers==5.24.0 accelerate==1.15.0 \
        tokenizers==0.23.3 regex==2026.11.19 psutil==7.2.2 $(GPU_WHEELS_MORE)
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

# ruff and mypy with the settings of pyproject.toml ([tool.ruff], [tool.mypy]); .ci/run runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check bench tests
	$(VENV)/bin/mypy

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache $(SLURM_STATE)
