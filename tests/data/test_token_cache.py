"""The tokenize-once cache: hits skip tokenizing, any changed input misses, damage is rebuilt."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from data_helpers import CallCounter, load, write_rows

from leantrain.data import cache as cache_mod
from leantrain.data.cache import CacheWarning, TokenCache, cache_root


def rows(n: int = 40) -> list[dict]:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return [
        {"text": f"{words[i % 8]} {words[(i // 8) % 8]} number {i}", "alt_text": f"other {i}",
         "label": "xyz"[i % 3], "alt_label": "pq"[i % 2]}
        for i in range(n)
    ]


@pytest.fixture
def csv_path(tmp_path) -> Path:
    return write_rows(tmp_path / "train.csv", rows())


BASE = {"eval_fraction": 0.25, "max_length": 16}


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def same_data(a, b) -> bool:
    return (a.train, a.eval, a.label_names, a.majority_label) == (b.train, b.eval, b.label_names, b.majority_label)


# ------------------------------------------------------------------ hits and misses


def test_second_load_tokenizes_nothing_and_returns_the_same_data(csv_path, tokenizer, monkeypatch, private_cache):
    counter = CallCounter(tokenizer, monkeypatch)
    first = load(tokenizer, train=str(csv_path), **BASE)
    assert counter.take() > 0 and first.stats["cache_hit"] is False
    assert len(entries(private_cache)) == 1

    second = load(tokenizer, train=str(csv_path), **BASE)
    assert counter.take() == 0  # not one tokenizer call
    assert second.stats["cache_hit"] is True and second.stats["cache_key"] == first.stats["cache_key"]
    assert same_data(first, second)
    assert {k: v for k, v in second.stats.items() if k != "cache_hit"} == {k: v for k, v in first.stats.items() if k != "cache_hit"}
    batch = second.collate(second.train[:4])  # the collator works on cached examples
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].tolist() == [ex["labels"] for ex in second.train[:4]]


def test_causal_lm_examples_come_back_identical(csv_path, tokenizer, monkeypatch):
    counter = CallCounter(tokenizer, monkeypatch)
    first = load(tokenizer, task="causal-lm", train=str(csv_path), **BASE)
    second = load(tokenizer, task="causal-lm", train=str(csv_path), **BASE)
    assert counter.take() == 2 and second.stats["cache_hit"]  # train + eval, once
    assert second.train == first.train and second.label_names is None
    assert set(second.collate(second.train[:2])) == {"input_ids", "attention_mask", "labels"}


def _changes(tmp_path: Path, csv_path: Path, tokenizer_dir: Path):
    """Each variant changes exactly one input of the base load."""
    from leantrain.models import load_tokenizer
    from leantrain.recipe import ModelSection

    edited = write_rows(tmp_path / "edited.csv", rows())
    edited.write_text(edited.read_text().replace("number 7,", "number 8,"))
    other_tok = load_tokenizer(ModelSection(name_or_path=str(tokenizer_dir)))
    other_tok.add_tokens(["brandnewtoken"])
    return {
        "one byte of the data": ({"train": str(edited)}, None, None),
        "tokenizer": ({}, other_tok, None),
        "text_column": ({"text_column": "alt_text"}, None, None),
        "label_column": ({"label_column": "alt_label"}, None, None),
        "max_length": ({"max_length": 8}, None, None),
        "limit": ({"limit": 30}, None, None),
        "eval_fraction": ({"eval_fraction": 0.5}, None, None),
        "seed": ({}, None, {"seed": 1}),
        "curate": ({"curate": True}, None, None),
        "curate settings": ({"curate": {"near_dedup": 0.5}}, None, None),
        "task": ({}, None, {"task": "causal-lm"}),
    }


def test_changing_any_one_input_misses(tmp_path, csv_path, tokenizer, tiny_bert_dir, monkeypatch, private_cache):
    base = {"train": str(csv_path), **BASE}
    load(tokenizer, **base)
    keys = set()
    for name, (data, other_tok, extra) in _changes(tmp_path, csv_path, tiny_bert_dir).items():
        tok = other_tok or tokenizer
        counter = CallCounter(tok, monkeypatch)
        result = load(tok, **{**base, **data}, **(extra or {}))
        assert result.stats["cache_hit"] is False, name
        assert counter.take() > 0, name
        keys.add(result.stats["cache_key"])
        again = load(tok, **{**base, **data}, **(extra or {}))  # and the changed input has its own entry
        assert again.stats["cache_hit"] is True and counter.take() == 0, name
    assert len(keys) == 11
    assert load(tokenizer, **base).stats["cache_hit"] is True  # the base entry is still there


def test_irrelevant_settings_and_moved_files_still_hit(tmp_path, csv_path, tokenizer):
    eval_path = write_rows(tmp_path / "eval.csv", rows(9))
    first = load(tokenizer, train=str(csv_path), eval=str(eval_path), max_length=16)
    # With an eval file, the split settings shape nothing: no reason to tokenize again.
    assert load(tokenizer, train=str(csv_path), eval=str(eval_path), max_length=16, seed=5, eval_fraction=0.5).stats["cache_hit"]
    # The key is the bytes, not the path: a copied data folder keeps its cache.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "t.csv").write_bytes(csv_path.read_bytes())
    (moved / "e.csv").write_bytes(eval_path.read_bytes())
    again = load(tokenizer, train=str(moved / "t.csv"), eval=str(moved / "e.csv"), max_length=16)
    assert again.stats["cache_hit"] and same_data(first, again)
    # Curation settings do not matter while curation is off.
    assert load(tokenizer, train=str(csv_path), eval=str(eval_path), max_length=16, curate={"enabled": False, "near_dedup": 0.3}).stats["cache_hit"]


def test_text_folder_edits_miss(tmp_path, tokenizer):
    root = tmp_path / "folder"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{i}.txt").write_text(f"text {label} {i}", encoding="utf-8")
    assert not load(tokenizer, train=str(root), eval_fraction=0.25).stats["cache_hit"]
    assert load(tokenizer, train=str(root), eval_fraction=0.25).stats["cache_hit"]
    (root / "a" / "0.txt").write_text("text a 0 edited", encoding="utf-8")
    assert not load(tokenizer, train=str(root), eval_fraction=0.25).stats["cache_hit"]
    (root / "b" / "9.txt").write_text("a new file", encoding="utf-8")
    assert not load(tokenizer, train=str(root), eval_fraction=0.25).stats["cache_hit"]


# ------------------------------------------------------------------ where and whether


def test_cache_location_recipe_key_then_env_then_home(tmp_path, csv_path, tokenizer, monkeypatch, private_cache):
    load(tokenizer, train=str(csv_path), **BASE)
    assert len(entries(private_cache)) == 1  # $LEANTRAIN_CACHE_DIR
    chosen = tmp_path / "from-recipe"
    data = load(tokenizer, train=str(csv_path), cache_dir=str(chosen), **BASE)
    assert data.stats["cache_hit"] is False and len(entries(chosen)) == 1  # data.cache_dir wins
    monkeypatch.delenv("LEANTRAIN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "leantrain" / "tokenized"


def test_cache_false_never_reads_or_writes(tmp_path, csv_path, tokenizer, monkeypatch, private_cache):
    counter = CallCounter(tokenizer, monkeypatch)
    for _ in range(2):
        data = load(tokenizer, train=str(csv_path), cache=False, **BASE)
        assert data.stats["cache_hit"] is False and data.stats["cache_key"] is None
        assert counter.take() > 0
    assert entries(private_cache) == []


# ------------------------------------------------------------------ storage


def test_entries_are_arrow_shards_json_and_a_checksummed_manifest(csv_path, tokenizer, private_cache, monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_ROWS", 7)  # 30 train rows -> 5 shards
    first = load(tokenizer, train=str(csv_path), **BASE)
    (entry,) = entries(private_cache)
    assert entry.name == first.stats["cache_key"]
    names = sorted(p.name for p in entry.iterdir())
    assert {Path(n).suffix for n in names} == {".arrow", ".json"}  # no pickles
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["splits"]["train"] == [f"train-{i:05d}.arrow" for i in range(5)]
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    for name, info in manifest["files"].items():
        assert cache_mod.file_sha256(entry / name) == info["sha256"]
    with pa.memory_map(str(entry / "train-00000.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.num_rows == 7 and table.column("labels").to_pylist() == [ex["labels"] for ex in first.train[:7]]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["label_names"] == ["x", "y", "z"] and meta["stats"]["rows_train"] == 30
    assert same_data(first, load(tokenizer, train=str(csv_path), **BASE))  # 5 shards read back in order


def _flip_byte(entry: Path) -> None:
    shard = entry / "train-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


DAMAGE = {
    "flipped byte in a shard": _flip_byte,
    "truncated shard": lambda e: (e / "train-00000.arrow").write_bytes((e / "train-00000.arrow").read_bytes()[:100]),
    "missing shard": lambda e: (e / "eval-00000.arrow").unlink(),
    "missing manifest": lambda e: (e / "manifest.json").unlink(),
    "garbage manifest": lambda e: (e / "manifest.json").write_text("{oops"),
    "missing metadata": lambda e: (e / "meta.json").unlink(),
    "edited metadata": lambda e: (e / "meta.json").write_text((e / "meta.json").read_text().replace('"x"', '"q"')),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_entries_warn_are_rebuilt_and_never_used(damage, csv_path, tokenizer, monkeypatch, private_cache):
    good = load(tokenizer, train=str(csv_path), **BASE)
    (entry,) = entries(private_cache)
    DAMAGE[damage](entry)
    counter = CallCounter(tokenizer, monkeypatch)
    with pytest.warns(CacheWarning, match="unusable"):
        rebuilt = load(tokenizer, train=str(csv_path), **BASE)
    assert counter.take() > 0 and rebuilt.stats["cache_hit"] is False
    assert same_data(good, rebuilt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is sound: no warning, a hit
        assert load(tokenizer, train=str(csv_path), **BASE).stats["cache_hit"] is True
    assert counter.take() == 0


def test_a_failed_write_leaves_no_entry_and_the_run_goes_on(csv_path, tokenizer, monkeypatch, private_cache):
    real_write = cache_mod._write_shard

    def failing(path, rows, schema):
        if path.name.startswith("eval"):
            raise OSError(28, "No space left on device")
        real_write(path, rows, schema)

    monkeypatch.setattr(cache_mod, "_write_shard", failing)
    with pytest.warns(CacheWarning, match="No space left"):
        data = load(tokenizer, train=str(csv_path), **BASE)
    assert len(data.train) == 30
    assert list(private_cache.iterdir()) == []  # neither an entry nor a temporary folder
    monkeypatch.setattr(cache_mod, "_write_shard", real_write)
    assert load(tokenizer, train=str(csv_path), **BASE).stats["cache_hit"] is False
    assert load(tokenizer, train=str(csv_path), **BASE).stats["cache_hit"] is True


def test_an_entry_written_concurrently_is_kept(tmp_path, csv_path, tokenizer):
    """Two processes storing the same key: the rename of the second fails; the first one stays."""
    store = TokenCache(tmp_path / "c")
    example = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": 1}]
    meta = {"label_names": ["a", "b"], "majority_label": 1, "stats": {}}
    assert store.store("k" * 64, example, [], meta) is not None
    assert store.store("k" * 64, example + example, [], meta) is not None  # loses the race quietly
    assert store.load("k" * 64).train == example
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["k" * 64]


def test_temporary_folders_of_dead_writers_are_removed_after_a_day(tmp_path):
    import os
    import time

    root = tmp_path / "c"
    stale, fresh = root / ".tmp-dead-writer", root / ".tmp-live-writer"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "train-00000.arrow").write_bytes(b"partial")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    example = [{"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0}]
    TokenCache(root).store("a" * 64, example, [], {"label_names": None, "majority_label": None, "stats": {}})
    assert sorted(p.name for p in root.iterdir()) == [".tmp-live-writer", "a" * 64]
