"""`leantrain predict` on classification runs, checked against plain transformers + PEFT."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testdata import make_topic_rows, write_csv
import torch

from leantrain import train

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
INPUTS = [  # the first six are plainly about sports, food, tech, sports, food, tech
    "the coach saw the referee at the match",
    "a recipe for soup with cheese and bread",
    "the compiler found a bug on the server",
    "today we saw a goal",
    "dinner with salad",
    "kernel network laptop",
    "really very about",
]

# Concurrent subprocesses each using every core would oversubscribe the CPU (OpenMP
# threads spin-wait on each other): one compute thread per child process.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def topics_csv(path: Path, n: int, seed: int = 0) -> Path:
    return write_csv(path, make_topic_rows(n, seed))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leantrain", *args], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=600)


def save_tiny_classifier(path: Path, tokenizer_from: Path, num_labels: int) -> Path:
    """A tiny BERT with a ``num_labels`` classification head, weights on disk."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(path)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            (path / name).write_bytes((tokenizer_from / name).read_bytes())
    return path


def cls_recipe(base, data, out, cuts=None, **train_cfg) -> dict:
    return {
        "model": {"name_or_path": str(base)},
        "data": {"train": str(data), "eval_fraction": 0.2, "max_length": 32},
        "cuts": {"lora": {"r": 8}} if cuts is None else cuts,
        "train": {"epochs": 3, "batch_size": 8, "lr": 5e-3, "seed": 0, "log_every": 5, **train_cfg},
        "output": {"dir": str(out)},
    }


def plain_peft_labels(base, run_dir: Path, texts: list[str], max_length: int = 32):
    """Labels and probabilities as a user gets them loading the adapter by hand."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = json.loads((run_dir / "model" / "leantrain.json").read_text())["labels"]
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    model = PeftModel.from_pretrained(model, run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    return [model.config.id2label[int(i)] for i in probs.argmax(-1)], probs


def in_memory_probs(model, run_dir: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    enc = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits.softmax(-1)


def write_inputs(folder: Path) -> dict[str, Path]:
    with (folder / "in.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(INPUTS))
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in INPUTS), encoding="utf-8")
    (folder / "in.txt").write_text("\n".join(INPUTS) + "\n\n", encoding="utf-8")  # a trailing blank line
    return {kind: folder / f"in.{kind}" for kind in ("csv", "jsonl", "txt")}


def check_records(records: list[dict], labels: list[str]) -> None:
    assert [r["text"] for r in records] == INPUTS
    for r in records:
        assert set(r["probabilities"]) == set(labels)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir):
    """LoRA on a tiny BERT that already knows the topics a little, so predictions vary."""
    root = tmp_path_factory.mktemp("predict")
    data = topics_csv(root / "topics.csv", 150)
    warmup = cls_recipe(tiny_bert_dir, data, root / "pretrain", cuts={}, lr=1e-2, epochs=6, seed=1)
    warmup["model"]["from_scratch"] = True
    base = train(warmup, show_progress=False).run_dir / "model"
    result = train(cls_recipe(base, data, root / "run", epochs=2, seed=1), show_progress=False)
    return base, result, root


def test_predict_cli_matches_plain_transformers_and_peft(lora_run):
    base, result, root = lora_run
    assert result.summary["cuts"] == ["lora", "fast_dropout"]
    assert (result.run_dir / "model" / "adapter_model.safetensors").is_file()
    inputs = write_inputs(root)

    def predict(kind):
        args = ["predict", str(result.run_dir), str(inputs[kind])]
        if kind == "csv":
            args += ["--output", str(root / "out.jsonl")]
        return run_cli(*args)

    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip(inputs, pool.map(predict, inputs)))
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr
    outputs = {
        "csv": (root / "out.jsonl").read_text(),
        "jsonl": procs["jsonl"].stdout,
        "txt": procs["txt"].stdout,
    }
    assert procs["csv"].stdout == ""  # --output: nothing on stdout

    expected_labels, expected_probs = plain_peft_labels(base, result.run_dir, INPUTS)
    labels = json.loads((result.run_dir / "model" / "leantrain.json").read_text())["labels"]
    assert labels == ["food", "sports", "tech"]
    for kind, text in outputs.items():
        records = [json.loads(line) for line in text.splitlines()]
        check_records(records, labels)
        assert [r["label"] for r in records] == expected_labels, kind
        got = torch.tensor([[r["probabilities"][n] for n in labels] for r in records])
        torch.testing.assert_close(got, expected_probs, atol=2e-6, rtol=0)
    # the model learned the topics, so agreement is not agreement on a constant answer
    assert result.summary["eval"]["accuracy"] > result.summary["eval"]["majority_class_accuracy"] + 0.2
    assert len(set(expected_labels)) >= 2


def test_saved_model_is_what_was_trained_across_reruns_and_from_scratch(tmp_path, tiny_bert_dir):
    """A from-scratch LoRA run saves its random base; a rerun in the same directory
    without LoRA leaves no stale adapter for transformers to pick up."""
    from leantrain.predict import predict

    data = topics_csv(tmp_path / "topics.csv", 60)
    out = tmp_path / "run"
    for cuts in ({"lora": {"r": 4}}, {}):
        recipe = cls_recipe(tiny_bert_dir, data, out, cuts=cuts, epochs=1)
        recipe["model"]["from_scratch"] = True
        result = train(recipe, show_progress=False)
        model_dir = result.run_dir / "model"
        assert (model_dir / "adapter_config.json").exists() == bool(cuts)
        assert (model_dir / "config.json").is_file()  # the random base is saved with the adapter
        records = list(predict(result.run_dir, INPUTS))
        labels = json.loads((model_dir / "leantrain.json").read_text())["labels"]
        got = torch.tensor([[r["probabilities"][n] for n in labels] for r in records])
        torch.testing.assert_close(got, in_memory_probs(result.model, result.run_dir, INPUTS), atol=2e-6, rtol=0)


def test_base_with_a_head_of_another_size_is_fine_tuned_and_predicted(tmp_path, tiny_bert_dir):
    from leantrain.predict import predict

    base = save_tiny_classifier(tmp_path / "base2", tiny_bert_dir, num_labels=2)
    data = topics_csv(tmp_path / "topics.csv", 60)  # three classes
    result = train(cls_recipe(base, data, tmp_path / "run", epochs=1), show_progress=False)
    assert result.summary["status"] == "completed"
    records = list(predict(result.run_dir, INPUTS))
    assert all(len(r["probabilities"]) == 3 for r in records)
    got = torch.tensor([[r["probabilities"][n] for n in ("food", "sports", "tech")] for r in records])
    torch.testing.assert_close(got, in_memory_probs(result.model, result.run_dir, INPUTS), atol=2e-6, rtol=0)


SUMMARY_KEYS = ("status", "eval", "steps", "epochs", "train_seconds", "samples_per_second", "trainable_params",
                "total_params", "peak_memory_bytes", "peak_memory_method", "saved")


@pytest.mark.slow
def test_bundled_minilm_lora_bf16_end_to_end(tmp_path, bundled_model_dir):
    data = topics_csv(tmp_path / "topics.csv", 200, seed=3)
    recipe = {
        "model": {"name_or_path": "bundled:minilm"},
        "data": {"train": str(data), "eval_fraction": 0.2, "max_length": 32},
        "cuts": {"lora": {"r": 8}, "precision": "bf16"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "seed": 0, "warmup_ratio": 0.1, "log_every": 10},
        "output": {"dir": str(tmp_path / "run")},
    }
    result = train(recipe, show_progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["status"] == "completed"
    assert 30 <= summary["steps"] <= 60
    assert summary["epochs"] == pytest.approx(3)
    assert summary["cuts"] == ["lora", "precision", "fast_dropout"]
    assert 0 < summary["trainable_params"] < 0.05 * summary["total_params"]
    assert summary["train_seconds"] > 0 and summary["samples_per_second"] > 0
    assert summary["peak_memory_bytes"] > 0 and summary["peak_memory_method"]
    assert summary["saved"]["model"] == str(result.run_dir / "model")
    ev = summary["eval"]
    assert ev["accuracy"] > ev["majority_class_accuracy"] + 0.2  # a pretrained encoder learns the topics

    (tmp_path / "in.txt").write_text("\n".join(INPUTS) + "\n", encoding="utf-8")
    proc = run_cli("predict", str(result.run_dir), str(tmp_path / "in.txt"))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    check_records(records, ["food", "sports", "tech"])
    expected, _ = plain_peft_labels(bundled_model_dir, result.run_dir, INPUTS)
    assert [r["label"] for r in records] == expected
    # the first six inputs are plainly about sports, food, tech, sports, food, tech
    assert expected[:6] == ["sports", "food", "tech"] * 2
