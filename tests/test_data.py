"""Reading, splitting, label-mapping, truncating and batching training data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from testdata import write_rows
from leantrain import train
from leantrain.data.sources import read_rows
from leantrain.data.text import load_text_data
from leantrain.recipe import DataSection, ModelSection


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own tokenized cache: no state shared with other tests or users."""
    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(tmp_path / "tokenized-cache"))


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from leantrain.models import load_tokenizer

    return load_tokenizer(ModelSection(name_or_path=str(tiny_bert_dir)))


def numbered_rows(n: int) -> list[dict]:
    """Rows whose texts are all distinct, so an example can be traced back to its row."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return [
        {"text": f"{words[i % 8]} {words[(i // 8) % 8]} number {i}", "label": ["red", "green", "blue"][i % 3]}
        for i in range(n)
    ]


def load(tokenizer, task="sequence-classification", seed=0, **data):
    return load_text_data(DataSection(**data), task, tokenizer, seed, lambda p: Path(p))


def ids_of(tokenizer, rows: list[dict], max_length: int = 128) -> list[tuple]:
    return [tuple(tokenizer(r["text"], truncation=True, max_length=max_length)["input_ids"]) for r in rows]


# ------------------------------------------------------------------ formats


def test_csv_jsonl_and_parquet_give_the_same_rows(tmp_path, tokenizer):
    rows = [
        {"text": "007", "label": "01"},  # looks numeric: must stay the string it is
        {"text": 'a "quoted", comma-separated text', "label": "02"},
        {"text": "NA", "label": "10"},  # a word, not a missing value
        {"text": "unicode: café naïve", "label": "01"},
        {"text": "last one", "label": "02"},
    ]
    read = {fmt: read_rows(write_rows(tmp_path / f"d.{fmt}", rows)) for fmt in ("csv", "jsonl", "parquet")}
    assert read["csv"] == rows
    assert read["jsonl"] == rows
    assert read["parquet"] == rows

    loaded = {
        fmt: load(tokenizer, train=str(tmp_path / f"d.{fmt}"), eval=str(tmp_path / f"d.{fmt}"))
        for fmt in ("csv", "jsonl", "parquet")
    }
    for fmt in ("jsonl", "parquet"):
        assert loaded[fmt].label_names == loaded["csv"].label_names
        assert loaded[fmt].train == loaded["csv"].train
    # label names are the strings of the file, ordered numerically when they are numbers
    assert loaded["csv"].label_names == ["01", "02", "10"]


def test_numeric_labels_sort_as_numbers(tmp_path, tokenizer):
    rows = [{"text": f"text {i}", "label": label} for i, label in enumerate(["10", "9", "2", "10", "9", "2"])]
    path = write_rows(tmp_path / "n.jsonl", rows)
    data = load(tokenizer, train=str(path), eval=str(path))
    assert data.label_names == ["2", "9", "10"]
    assert [ex["labels"] for ex in data.train] == [2, 1, 0, 2, 1, 0]


def test_limit_uses_only_the_first_rows(tmp_path, tokenizer):
    rows = numbered_rows(40)
    path = write_rows(tmp_path / "d.csv", rows)
    assert read_rows(path, limit=7) == rows[:7]
    data = load(tokenizer, train=str(path), limit=10, eval_fraction=0.2)
    assert (data.stats["rows_train"], data.stats["rows_eval"], data.stats["rows_in"]) == (8, 2, 10)
    seen = {tuple(ex["input_ids"]) for ex in data.train + data.eval}
    assert seen == set(ids_of(tokenizer, rows[:10]))


# ------------------------------------------------------------------ eval split


def test_eval_fraction_split_is_seeded_and_disjoint(tmp_path, tokenizer):
    rows = numbered_rows(50)
    path = str(write_rows(tmp_path / "d.csv", rows))

    def split(seed):
        data = load(tokenizer, seed=seed, train=path, eval_fraction=0.2)
        return [tuple(ex["input_ids"]) for ex in data.train], [tuple(ex["input_ids"]) for ex in data.eval]

    train_a, eval_a = split(1)
    train_b, eval_b = split(1)
    train_c, eval_c = split(2)
    assert len(eval_a) == 10 and len(train_a) == 40
    assert (train_a, eval_a) == (train_b, eval_b)  # same seed, same split
    assert set(eval_a) != set(eval_c)  # another seed, another split
    for tr, ev in ((train_a, eval_a), (train_c, eval_c)):
        assert not set(tr) & set(ev)
        assert sorted(tr + ev) == sorted(ids_of(tokenizer, rows))


def test_explicit_eval_file_is_used_instead_of_a_split(tmp_path, tokenizer):
    train_rows, eval_rows = numbered_rows(30), numbered_rows(36)[30:]
    data = load(
        tokenizer,
        train=str(write_rows(tmp_path / "train.csv", train_rows)),
        eval=str(write_rows(tmp_path / "eval.jsonl", eval_rows)),
        eval_fraction=0.5,  # ignored: an eval file is given
    )
    assert [tuple(ex["input_ids"]) for ex in data.train] == ids_of(tokenizer, train_rows)
    assert [tuple(ex["input_ids"]) for ex in data.eval] == ids_of(tokenizer, eval_rows)
    assert [data.label_names[ex["labels"]] for ex in data.eval] == [r["label"] for r in eval_rows]


def test_label_map_is_saved_with_the_model(tiny_recipe):
    tiny_recipe["train"].update(epochs=1)
    result = train(tiny_recipe, show_progress=False)
    model_dir = result.run_dir / "model"
    meta = json.loads((model_dir / "leantrain.json").read_text())
    assert meta["labels"] == ["food", "sports", "tech"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "food", "1": "sports", "2": "tech"}
    assert config["label2id"] == {"food": 0, "sports": 1, "tech": 2}


# ------------------------------------------------------------------ tokenization and batching


def test_long_texts_are_truncated_to_max_length(tmp_path, tokenizer):
    rows = [{"text": " ".join(["word"] * 100), "label": "a"}, {"text": "short", "label": "b"}]
    path = write_rows(tmp_path / "d.csv", rows)
    data = load(tokenizer, train=str(path), eval=str(path), max_length=12)
    long, short = data.train
    assert len(long["input_ids"]) == 12
    assert long["input_ids"][-1] == tokenizer.sep_token_id  # truncation keeps the special tokens
    assert len(short["input_ids"]) == len(tokenizer("short")["input_ids"]) < 12


def test_a_batch_is_padded_to_its_longest_row_not_to_max_length(tmp_path, tokenizer):
    texts = ["one", "one two three four", "one two three four five six seven"]
    rows = [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(texts)]
    path = write_rows(tmp_path / "d.csv", rows)
    data = load(tokenizer, train=str(path), eval=str(path), max_length=64)
    lengths = [len(ex["input_ids"]) for ex in data.train]
    assert len(set(lengths)) == 3

    batch = data.collate(data.train)
    assert tuple(batch["input_ids"].shape) == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].tolist() == [0, 1, 0]

    short = data.collate(data.train[:2])
    assert tuple(short["input_ids"].shape) == (2, max(lengths[:2]))


def test_causal_lm_batches_pad_to_longest_and_mask_padding_in_labels(tmp_path, tokenizer):
    rows = [{"text": "the cat sat"}, {"text": "the cat sat on the mat today"}, {"text": "hi"}]
    path = write_rows(tmp_path / "d.csv", rows)
    data = load(tokenizer, task="causal-lm", train=str(path), eval=str(path))
    assert data.label_names is None
    lengths = [len(ex["input_ids"]) for ex in data.train]
    batch = data.collate(data.train)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # no token_type_ids for a decoder
    assert tuple(batch["input_ids"].shape) == (3, max(lengths))
    mask = batch["attention_mask"].bool()
    assert mask.sum(1).tolist() == lengths
    assert (batch["labels"][mask] == batch["input_ids"][mask]).all()
    assert (batch["labels"][~mask] == -100).all()
    assert (~mask).any()


def test_eval_fraction_zero_holds_nothing_out(tiny_recipe):
    tiny_recipe["data"]["eval_fraction"] = 0.0
    tiny_recipe["train"].update(epochs=1)
    result = train(tiny_recipe, show_progress=False)
    assert result.summary["status"] == "completed"
    assert result.summary["steps"] == 15  # all 120 rows train, batch 8
    assert result.summary["eval"] == {}
