"""Shared fixtures: tiny random-init Hugging Face models and small labelled text files.

Toy models keep the suite fast on 2 CPU cores; a few end-to-end tests (marked `slow`)
use the bundled pretrained MiniLM. Nothing here touches the network.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tokenize-once cache of the test session lives in a throwaway folder, not ~/.cache.
if "LEANTRAIN_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["LEANTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="leantrain-test-cache-")

from testdata import copy_tokenizer, make_topic_rows, write_csv  # noqa: E402  (shared with test modules)


@pytest.fixture(autouse=True)
def _cpu_bf16_as_native():
    """bf16 tests exercise the bf16 path whatever CPU runs the suite: the precision cut's
    fallback to fp32 on CPUs without native bf16 is tested on its own (test_cut_precision).
    Its own MonkeyPatch, so a test's `monkeypatch.undo()` cannot lift it mid-test."""
    import leantrain.cuts.precision as precision

    def native(*args, **kwargs) -> float:
        return 0.5

    native.measure = precision.cpu_bf16_slowdown  # the real probe, for the test of the probe itself
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_bf16_slowdown", native)
        yield


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    from leantrain.models import resolve_model_path

    return Path(resolve_model_path("bundled:minilm"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A 2-layer, 32-wide BERT (random init) with MiniLM's tokenizer, as a local model dir."""
    from transformers import BertConfig

    path = tmp_path_factory.mktemp("tiny-bert")
    BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    ).save_pretrained(path)
    copy_tokenizer(bundled_model_dir, path)
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
    copy_tokenizer(bundled_model_dir, path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The bundled chat LLM (SmolLM2-135M-Instruct), converted from GGUF once per session."""
    from leantrain.models import resolve_model_path

    return Path(resolve_model_path("bundled:smollm2"))


@pytest.fixture(scope="session")
def tiny_chat_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer Llama (random init) with SmolLM2's tokenizer and chat template."""
    from transformers import AutoConfig, LlamaConfig

    base = AutoConfig.from_pretrained(smollm2_dir)
    path = tmp_path_factory.mktemp("tiny-chat-llama")
    LlamaConfig(
        vocab_size=base.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=base.pad_token_id, bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id,
    ).save_pretrained(path)
    copy_tokenizer(smollm2_dir, path)
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
