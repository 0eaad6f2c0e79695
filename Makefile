# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Nothing leantrain runs may reach a model hub: the demo and tests are offline by design.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pin torch first: a CPU build (on this machine it installs from local disk in
	# seconds); an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

data/demo/fortunes.csv: examples/fortunes.py
	$(BIN)/python examples/fortunes.py --output $@

demo: $(STAMP) data/demo/fortunes.csv
	$(BIN)/leantrain train examples/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP) data/demo/fortunes.csv
	$(BIN)/python bench/demo_cuts.py --steps 40
	$(BIN)/python bench/bucketing.py --steps 24
	$(BIN)/python bench/data_cache.py
	$(BIN)/python bench/prefetch.py --steps 8
	$(BIN)/python bench/vs_hf.py --steps 30 --rounds 3 --fullft-rounds 3

clean:
	rm -rf $(VENV) runs data/demo
