# Two entry points for a fresh machine: `make demo` and `make test`. Each builds its own venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every pinned version lives in constraints.txt. torch is named in the SAME pip command as everything else so the
# constraint picks the CPU wheel (otherwise pip pulls a multi-GB CUDA build).
export RAY_USAGE_STATS_ENABLED=0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export HF_HUB_OFFLINE=1
export TRANSFORMERS_VERBOSITY=error
export NO_PROXY=127.0.0.1,localhost
# the demo and the tests talk to loopback only: boto3's credential chain must not ask the EC2 metadata service
export AWS_EC2_METADATA_DISABLED=true

.PHONY: venv demo test test-unit lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch -e ".[dev,hosted]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/imagefleet demo

# --durations: every run (CI included) lists its slowest tests, to keep the suite under 20 minutes
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

# The fast loop: unit tests only (no Ray, no SeaweedFS); the in-suite lint test is `slow`, `make lint` covers it.
test-unit: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests/unit

# ruff over the tree, strict mypy over configs pipelines jobs actors ([tool.mypy] files in pyproject.toml).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .imagefleet
