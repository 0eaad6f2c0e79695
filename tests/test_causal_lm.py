"""Causal language modelling on a tiny Llama: train, evaluate (perplexity), predict."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from leantrain import train

PHRASES = ["the cat sat on the mat", "a dog ran in the park", "we ate bread and cheese", "the server has a bug"]

# Concurrent subprocesses each using every core would oversubscribe the CPU (OpenMP
# threads spin-wait on each other): one compute thread per child process.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def lm_csv(tmp_path_factory):
    """A text column only: no labels for a language model."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("lm") / "lines.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        for _ in range(80):
            writer.writerow([" ".join(rng.choice(PHRASES) for _ in range(rng.randint(1, 3)))])
    return path


def lm_recipe(tiny_llama_dir, lm_csv, out, cuts=None, **train_settings) -> dict:
    return {
        "model": {"name_or_path": str(tiny_llama_dir), "task": "causal-lm", "from_scratch": True},
        "data": {"train": str(lm_csv), "eval_fraction": 0.2, "max_length": 32},
        "cuts": cuts or {},
        "train": {"epochs": 3, "batch_size": 8, "lr": 2e-2, "seed": 0, "log_every": 1, **train_settings},
        "output": {"dir": str(out)},
    }


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, lm_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-runs")
    return {
        "full": train(lm_recipe(tiny_llama_dir, lm_csv, root / "full"), show_progress=False),
        "lora": train(lm_recipe(tiny_llama_dir, lm_csv, root / "lora", {"lora": {"r": 8}}, eval_at_start=True), show_progress=False),
    }


def first_train_loss(run_dir) -> float:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "train":
            return event["loss"]
    raise AssertionError("no train line")


@pytest.mark.parametrize("name", ["full", "lora"])
def test_causal_lm_trains_and_reports_perplexity(runs, name):
    summary = runs[name].summary
    assert summary["status"] == "completed"
    assert summary["steps"] == 3 * 8  # 64 training rows / batch 8, three epochs
    ev = summary["eval"]
    assert set(ev) == {"loss", "perplexity"}
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]), rel=1e-9)
    assert ev["loss"] < first_train_loss(runs[name].run_dir) - 0.05  # it learned something


def test_eval_at_start_measures_the_starting_model_before_the_first_step(runs):
    lora, full = runs["lora"], runs["full"]
    events = [json.loads(line) for line in (lora.run_dir / "metrics.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.index("eval_at_start") < names.index("train")
    before = lora.summary["extras"]["eval_at_start"]
    assert before == {k: v for k, v in events[names.index("eval_at_start")].items() if k in before}
    assert set(before) == {"loss", "perplexity"}
    assert before["loss"] > lora.summary["eval"]["loss"] + 0.05  # the before of a before/after
    assert "eval_at_start" not in full.summary["extras"]


def test_full_training_learns_the_phrases(runs, tiny_llama_dir):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_llama_dir).vocab_size
    # a random model scores about log(vocab); a trained one is far better on these repetitive lines
    assert runs["full"].summary["eval"]["loss"] < 0.6 * math.log(vocab)


def test_lora_trains_only_a_small_fraction(runs):
    summary = runs["lora"].summary
    assert summary["cuts"] == ["lora", "fast_dropout"]
    assert 0 < summary["trainable_params"] < 0.05 * summary["total_params"]
    assert summary["trainable_params"] < runs["full"].summary["trainable_params"]


@pytest.mark.parametrize("name", ["full", "lora"])
def test_saved_model_reloads_to_the_trained_weights(runs, name):
    """What predict loads is what was trained (for LoRA from scratch: the random base too)."""
    from leantrain.predict import load_run_model

    loaded, tokenizer, meta = load_run_model(runs[name].run_dir)
    assert meta["task"] == "causal-lm" and meta["adapter"] == (name == "lora")
    ids = tokenizer("the cat sat on", return_tensors="pt")["input_ids"]
    trained = runs[name].model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_predict_cli_writes_one_continuation_per_input(runs, tmp_path):
    inputs = ["the cat sat", "a dog", "we ate bread"]
    (tmp_path / "input.txt").write_text("\n".join(inputs) + "\n", encoding="utf-8")

    def predict(name):
        return subprocess.run(
            [sys.executable, "-m", "leantrain", "predict", str(runs[name].run_dir), str(tmp_path / "input.txt")],
            capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(["full", "lora"], pool.map(predict, ["full", "lora"])))

    for name, proc in procs.items():
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["text"] for r in records] == inputs
        assert all(isinstance(r["continuation"], str) for r in records)

    # the CLI's continuation is the trained model's own greedy continuation
    from leantrain.predict import load_run_model

    _, tokenizer, _ = load_run_model(runs["full"].run_dir)
    model = runs["full"].model.eval()
    for text, record in zip(inputs, (json.loads(line) for line in procs["full"].stdout.splitlines())):
        enc = tokenizer(text, return_tensors="pt")
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=20,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert record["continuation"] == expected
    assert any(r.strip() for r in (json.loads(line)["continuation"] for line in procs["full"].stdout.splitlines()))


def test_model_card_gives_the_training_tokens(runs):
    """A language model's data size on its card: the tokens of the training split it used."""
    from leantrain.data.text import load_text_data
    from leantrain.models import load_tokenizer
    from leantrain.recipe import load_recipe

    run = runs["lora"]
    recipe = load_recipe(run.run_dir / "config.yaml")
    data = load_text_data(recipe.data, recipe.model.task, load_tokenizer(recipe.model), recipe.train.seed,
                          recipe.resolve_path)
    expected = sum(len(example["input_ids"]) for example in data.train)
    assert len(data.train) == 64 and expected > 64
    assert run.summary["data"]["tokens_train"] == expected
    card = (run.run_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert f"- {expected:,} training tokens" in card
