"""Fixtures for the cost-cut tests.

LoRA cannot learn much on top of a *randomly initialised* frozen encoder, so cut tests
that need a run to improve use ``tiny_base_dir``: the tiny BERT of ``tiny_bert_dir``,
briefly trained on a separate topic data set and saved (encoder only, with weights) as
a local "pretrained" model. Fine-tuning it gets a fresh classification head.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest

from cuts_helpers import shared_conftest
from testdata import copy_tokenizer


@pytest.fixture(autouse=True)
def _quiet_warnings():
    # transformers/peft deprecation chatter is not what these tests are about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    from leantrain import train

    shared = shared_conftest()
    root = tmp_path_factory.mktemp("tiny-base")
    csv = shared.write_csv(root / "pretrain.csv", shared.make_topic_rows(240, seed=7))
    result = train(
        {
            "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
            "data": {"train": str(csv), "eval_fraction": 0.1, "max_length": 32},
            "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "seed": 1},
            "output": {"dir": str(root / "run"), "save_model": False},
        },
        show_progress=False,
    )
    base = root / "base"
    result.model.bert.save_pretrained(base)  # encoder + pooler; the head is left out
    copy_tokenizer(tiny_bert_dir, base)
    return base


@pytest.fixture
def cut_recipe(tiny_recipe, tiny_base_dir) -> dict:
    """``tiny_recipe`` fine-tuning the tiny pretrained base instead of a random model."""
    recipe = copy.deepcopy(tiny_recipe)
    recipe["model"] = {"name_or_path": str(tiny_base_dir)}
    return recipe


def write_topic_vectors(path: Path, dim: int = 32, seed: int = 0) -> Path:
    """A GloVe-style text file in which each topic's words share one direction.

    Informative by construction: the words that decide a topic_csv label point the same
    way, filler words are small noise. Used to warm-start the tiny models' embeddings.
    """
    import torch

    shared = shared_conftest()
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0][:, : len(shared.TOPIC_WORDS)].T
    lines = []
    for direction, topic in zip(directions, sorted(shared.TOPIC_WORDS)):
        for word in shared.TOPIC_WORDS[topic]:
            lines.append((word, direction + 0.1 * torch.randn(dim, generator=gen)))
    lines += [(word, 0.1 * torch.randn(dim, generator=gen)) for word in shared.FILLER]
    path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in v.tolist())}\n" for w, v in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def topic_vectors(tmp_path_factory) -> Path:
    """32-dim topic vectors (the tiny models' width) for `cuts.warm_start.source`."""
    return write_topic_vectors(tmp_path_factory.mktemp("vectors") / "topics.txt")


@pytest.fixture(scope="session")
def tiny_teacher_run(tmp_path_factory, tiny_base_dir) -> Path:
    """A fine-tuned classification run on the tiny base: the teacher of distillation tests."""
    from leantrain import train

    shared = shared_conftest()
    root = tmp_path_factory.mktemp("tiny-teacher")
    # The shared tiny recipe (data, split, schedule), fine-tuning the pretrained tiny base.
    teacher = shared.tiny_recipe.__wrapped__(root, tiny_base_dir, shared.write_csv(root / "t.csv", shared.make_topic_rows(120)))
    teacher["model"] = {"name_or_path": str(tiny_base_dir)}
    return train(teacher, show_progress=False).run_dir
