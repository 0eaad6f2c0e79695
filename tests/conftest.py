"""Shared fixtures: tiny random-init Hugging Face models and small labelled text files.

Toy models keep the suite fast on 2 CPU cores; a few end-to-end tests (marked `slow`)
use the bundled pretrained MiniLM. Nothing here touches the network.
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOPIC_WORDS = {
    "sports": ["goal", "match", "team", "score", "league", "coach", "ball", "referee"],
    "food": ["bread", "cheese", "soup", "recipe", "oven", "spice", "dinner", "salad"],
    "tech": ["code", "server", "bug", "compiler", "network", "laptop", "kernel", "cloud"],
}
FILLER = ["the", "a", "today", "we", "saw", "really", "very", "and", "then", "about", "with"]


def make_topic_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic but learnable: each text mixes filler with words of its topic."""
    rng = random.Random(seed)
    topics = sorted(TOPIC_WORDS)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words += [rng.choice(TOPIC_WORDS[topic]) for _ in range(rng.randint(1, 3))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": topic})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    from leantrain.models import resolve_model_path

    return Path(resolve_model_path("bundled:minilm"))


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A 2-layer, 32-wide BERT (random init) with MiniLM's tokenizer, as a local model dir."""
    from transformers import BertConfig

    path = tmp_path_factory.mktemp("tiny-bert")
    BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    ).save_pretrained(path)
    _copy_tokenizer(bundled_model_dir, path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A 2-layer Llama-style causal LM config (random init) sharing MiniLM's tokenizer."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=101, eos_token_id=102,
    ).save_pretrained(path)
    _copy_tokenizer(bundled_model_dir, path)
    return path


@pytest.fixture
def topic_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "topics.csv", make_topic_rows(120))


@pytest.fixture
def tiny_recipe(tmp_path, tiny_bert_dir, topic_csv) -> dict:
    """A fast classification recipe on the tiny BERT; tests tweak and pass it to train()."""
    return {
        "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
        "data": {"train": str(topic_csv), "eval_fraction": 0.25, "max_length": 32},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "log_every": 5},
        "output": {"dir": str(tmp_path / "run")},
    }
