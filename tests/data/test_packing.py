"""Sequence packing for causal LM: a packed row behaves exactly like its documents run alone."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
from data_helpers import load, write_rows

from leantrain import train
from leantrain.data.packing import PackedCollator, check_model_packs, pack_rows
from leantrain.data.text import CausalLMCollator
from leantrain.engine.tasks import CausalLMTask
from leantrain.errors import DataError

WORDS = "the cat sat on a mat while we ate bread and cheese near the old server".split()


@pytest.fixture
def lm_file(tmp_path):
    rng = random.Random(1)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))} for _ in range(60)]
    return write_rows(tmp_path / "docs.jsonl", rows)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from leantrain.models import load_model
    from leantrain.recipe import ModelSection

    torch.manual_seed(0)
    return load_model(ModelSection(name_or_path=str(tiny_llama_dir), task="causal-lm", from_scratch=True)).eval()


def test_rows_hold_every_document_once_within_capacity(tokenizer, lm_file):
    data = load(tokenizer, "causal-lm", train=str(lm_file), eval_fraction=0.0, max_length=24, pack=True)
    rows, docs = data.train.rows, data.train.documents
    assert sorted(d for row in rows for d in row) == list(range(len(docs)))
    assert all(sum(len(docs[d]["input_ids"]) for d in row) <= 24 for row in rows)
    assert len(rows) < len(docs)
    again = load(tokenizer, "causal-lm", train=str(lm_file), eval_fraction=0.0, max_length=24, pack=True)
    assert again.stats["cache_hit"] and again.train.rows == rows  # deterministic, and packed after the cache


def test_packed_logits_and_loss_equal_documents_alone(tokenizer, lm_file, llama):
    data = load(tokenizer, "causal-lm", train=str(lm_file), eval_fraction=0.0, max_length=32, pack=True)
    packed_rows = [i for i, row in enumerate(data.train.rows) if len(row) >= 3][:2]
    assert packed_rows, "expected rows holding several documents"
    batch = data.collate([data.train[i] for i in packed_rows])
    assert "attention_mask" not in batch  # the mask comes from position_ids, not a padding mask
    task = CausalLMTask()
    with torch.no_grad():
        logits = llama(**{k: v for k, v in batch.items() if k != "labels"}).logits
        packed_loss = task.loss_sum(llama, batch).item()
    single = CausalLMCollator(tokenizer)
    alone_loss, alone_targets = 0.0, 0
    for r, row in enumerate(packed_rows):
        start = 0
        for doc in data.train.rows[row]:
            doc_batch = single([data.train.documents[doc]])
            with torch.no_grad():
                doc_logits = llama(input_ids=doc_batch["input_ids"]).logits[0]
                alone_loss += task.loss_sum(llama, doc_batch).item()
            alone_targets += task.count(doc_batch)
            n = doc_logits.shape[0]
            torch.testing.assert_close(logits[r, start : start + n], doc_logits, atol=1e-5, rtol=0)
            assert batch["labels"][r, start] == -100  # a document's first token is never a target
            start += n
        assert (batch["labels"][r, start:] == -100).all()  # padding is never a target
    assert task.count(batch) == alone_targets
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)


class IgnoresPositions(torch.nn.Module):
    """A causal LM that drops position_ids: its attention would cross documents."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, position_ids=None, **kwargs):
        return self.model(**kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()


def test_model_check_accepts_block_masking_and_refuses_crossing(llama):
    check_model_packs(llama)
    with pytest.raises(DataError, match="data.pack"):
        check_model_packs(IgnoresPositions(llama))


def test_classification_refuses_packing(tokenizer, topic_csv):
    with pytest.raises(DataError, match="data.pack.*causal-lm"):
        load(tokenizer, train=str(topic_csv), pack=True)


def test_pack_rows_is_best_fit():
    # 27 tokens in rows of 10: best-fit decreasing needs the minimum, 3 rows (7+3, 6+4,
    # 5+2); packing in arrival order (next-fit) would need 4.
    lengths = [6, 5, 4, 3, 7, 2]
    rows = pack_rows(lengths, 10)
    assert len(rows) == 3 and sorted(d for row in rows for d in row) == list(range(6))
    assert all(sum(lengths[d] for d in row) <= 10 for row in rows)
    assert pack_rows(lengths, 10) == rows  # deterministic
    with pytest.raises(DataError, match="max_length"):
        pack_rows([11], 10)


def test_training_with_packing_cuts_padding(tiny_llama_dir, lm_file, tmp_path):
    evaluation = write_rows(tmp_path / "eval.jsonl", [{"text": " ".join(WORDS[i : i + 5])} for i in range(10)])

    def run(pack: bool) -> dict:
        recipe = {
            "model": {"name_or_path": str(tiny_llama_dir), "task": "causal-lm", "from_scratch": True},
            # The packed run also streams into memory-mapped shards, read by a worker process.
            "data": {"train": str(lm_file), "eval": str(evaluation), "max_length": 32, "pack": pack, "streaming": pack},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "seed": 0, "bucket_by_length": False, "data_workers": int(pack)},
            "output": {"dir": str(tmp_path / f"pack-{pack}"), "save_model": False},
        }
        train(recipe, show_progress=False)
        return json.loads((tmp_path / f"pack-{pack}" / "summary.json").read_text())

    plain, packed = run(False), run(True)
    assert packed["data"]["padded_token_fraction"] < plain["data"]["padded_token_fraction"] / 2
    assert packed["data"]["packing"]["documents"] == plain["data"]["rows_train"] > packed["data"]["packing"]["rows"]
    assert packed["status"] == "completed" and math.isfinite(packed["eval"]["loss"])
