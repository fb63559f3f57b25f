# diffvar: `make train` trains the embedded default (digits), `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-bench
WORKDIR ?= runs/digits

.PHONY: install test train clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,slurm]'
	touch $(STAMP)

# The tests also check the PyTorch peer (benchmarks/torch_peer.py) against diffvar's U-Net: the bench extra (torch CPU).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(TEST_STAMP)

# The layers contract (import-linter, pyproject.toml), then one pytest worker per core (pytest-xdist); each test
# file runs on one worker, so its module fixtures are built once.
test: $(TEST_STAMP)
	$(VENV)/bin/lint-imports
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n auto --dist loadfile tests

train: install
	JAX_PLATFORMS=cpu $(PY) scripts/train.py --config=configs/digits.py --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs *.egg-info
