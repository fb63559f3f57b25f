# diffvar: `make train` trains the embedded default (digits), `make test` runs the tests (no torch needed),
# `make bench-test` the tests of the PyTorch peer (installs torch).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
WORKDIR ?= runs/digits

.PHONY: install test bench-test lint train clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,slurm]'
	touch $(STAMP)

# The bench extra (torch CPU), for the PyTorch peer (benchmarks/torch_peer.py) only.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# ruff's lint rules and formatting, and the layers contract (import-linter); all in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Then one pytest worker per core (pytest-xdist); each test file runs on one worker, so its module fixtures are
# built once. Tests that need torch skip without it (make bench-test runs them).
test: lint
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n auto --dist loadfile --durations=15 tests

# The peer's tests and the benchmarks' smoke runs, torch installed.
bench-test: $(BENCH_STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n auto --dist loadfile --durations=15 tests/test_peer.py tests/test_bench.py

train: install
	JAX_PLATFORMS=cpu MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 \
	  $(PY) scripts/train.py --config=configs/digits.py --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs *.egg-info
