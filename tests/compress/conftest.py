"""Fixtures for compression tests: a tiny trained classification run (LoRA on a tiny BERT)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from testdata import make_topic_rows, write_csv


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert_dir) -> Path:
    """A finished run directory: the 2-block tiny BERT trained from scratch with LoRA.

    LoRA on a from-scratch base makes the run save its base next to the adapter, so the
    compress path that merges an adapter into its base is exercised too.
    """
    from leantrain import train

    root = tmp_path_factory.mktemp("tiny-run")
    csv = write_csv(root / "topics.csv", make_topic_rows(120, seed=3))
    recipe = {
        "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
        "data": {"train": str(csv), "eval_fraction": 0.25, "max_length": 32},
        "cuts": {"lora": {"r": 4}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "seed": 0},
        "output": {"dir": str(root / "run")},
    }
    return train(recipe, show_progress=False).run_dir


@pytest.fixture(scope="session")
def tiny_model_and_batch(tiny_run):
    """The tiny run's merged float model and one tokenized batch of its eval split."""
    from leantrain.compress.measure import eval_data, latency_batch, run_recipe
    from leantrain.predict import load_run_model

    model, tokenizer, _ = load_run_model(tiny_run)
    data = eval_data(run_recipe(tiny_run), tokenizer)
    return model.merge_and_unload().float().eval(), latency_batch(data, 8)
