"""Fixtures for the data-pipeline tests: a private tokenized cache per test, a tokenizer."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own tokenized cache, never the user's ~/.cache."""
    root = tmp_path / "leantrain-cache"
    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(root))
    return root / "tokenized"


@pytest.fixture(scope="session")
def tokenizer(tiny_bert_dir):
    from leantrain.models import load_tokenizer
    from leantrain.recipe import ModelSection

    return load_tokenizer(ModelSection(name_or_path=str(tiny_bert_dir)))
