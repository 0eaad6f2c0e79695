"""Streaming preparation: chunk by chunk into memory-mapped shards, same examples as in memory."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from data_helpers import CallCounter, load, write_rows

from leantrain.data import streaming
from leantrain.data.cache import CacheWarning

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))), "label": "xyz"[i % 3]} for i in range(n)]
    for i in range(0, n, 9):  # planted exact duplicates (case and spacing differ)
        rows[i + 1 if i + 1 < n else i]["text"] = "  " + rows[i]["text"].upper()
    rows[3]["text"] = "12345 !!!"  # junk, filtered
    return rows


def materialize(examples) -> list[dict]:
    return [examples[i] for i in range(len(examples))]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 16 rows: the small files below cross many chunk boundaries."""
    monkeypatch.setattr(streaming, "CHUNK_ROWS", 16)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_streaming_gives_exactly_the_in_memory_examples(tokenizer, tmp_path, suffix):
    train = write_rows(tmp_path / f"train{suffix}", make_rows(150, 0))
    evaluation = write_rows(tmp_path / f"eval{suffix}", make_rows(30, 1))
    settings = {"train": str(train), "eval": str(evaluation), "max_length": 16, "curate": {"near_dedup": 0.7}}
    memory = load(tokenizer, **settings)
    streamed = load(tokenizer, streaming=True, **settings)
    assert materialize(streamed.train) == memory.train and materialize(streamed.eval) == memory.eval
    assert (streamed.label_names, streamed.majority_label) == (memory.label_names, memory.majority_label)
    for key in ("rows_in", "rows_out", "duplicates_removed", "curation"):
        assert streamed.stats[key] == memory.stats[key]
    assert memory.stats["duplicates_removed"] > 10  # curation had work to do, in both paths alike


def test_text_folder_and_saved_dataset_stream_like_they_load(tokenizer, tmp_path):
    import datasets

    rows = make_rows(90, 6)
    folder = tmp_path / "folder"
    for i, row in enumerate(rows):
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / f"{i:03d}.txt").write_text(row["text"], encoding="utf-8")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y", "z"])})
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(saved))
    for source in (folder, saved):
        settings = {"train": str(source), "eval": str(source), "max_length": 12, "curate": {"remove_eval_overlap": False}}
        memory, streamed = load(tokenizer, **settings), load(tokenizer, streaming=True, **settings)
        assert materialize(streamed.train) == memory.train and streamed.label_names == memory.label_names == ["x", "y", "z"]


def test_causal_lm_streaming_with_limit_matches(tokenizer, tmp_path):
    train = write_rows(tmp_path / "train.jsonl", make_rows(100, 2))
    settings = {"train": str(train), "eval_fraction": 0.0, "max_length": 12, "limit": 70}
    memory = load(tokenizer, "causal-lm", **settings)
    streamed = load(tokenizer, "causal-lm", streaming=True, **settings)
    assert len(memory.train) == 70 and materialize(streamed.train) == memory.train
    assert streamed.train.lengths() == [len(ex["input_ids"]) for ex in memory.train]


def test_hash_split_is_disjoint_deterministic_and_cached(tokenizer, tmp_path, monkeypatch):
    path = write_rows(tmp_path / "train.csv", [{"text": f"{WORDS[i % 13]} row {i}", "label": "ab"[i % 2]} for i in range(400)])
    counter = CallCounter(tokenizer, monkeypatch)
    first = load(tokenizer, train=str(path), eval_fraction=0.25, streaming=True)
    assert counter.take() > 0 and first.stats["eval_split"] == "text hash"
    texts = {split: {tokenizer.decode(ex["input_ids"]) for ex in materialize(getattr(first, split))} for split in ("train", "eval")}
    assert not texts["train"] & texts["eval"] and len(texts["train"]) + len(texts["eval"]) == 400
    assert 60 <= len(texts["eval"]) <= 140  # about a quarter
    second = load(tokenizer, train=str(path), eval_fraction=0.25, streaming=True)
    assert counter.take() == 0 and second.stats["cache_hit"]
    assert materialize(second.eval) == materialize(first.eval)
    reseeded = load(tokenizer, seed=1, train=str(path), eval_fraction=0.25, streaming=True)
    assert materialize(reseeded.eval) != materialize(first.eval)


def test_damaged_shard_is_rebuilt(tokenizer, tmp_path, private_cache):
    path = write_rows(tmp_path / "train.csv", make_rows(60, 3))
    first = load(tokenizer, train=str(path), eval_fraction=0.2, streaming=True)
    expected = materialize(first.train)  # before the damage: ``first`` maps the same file
    shard = private_cache / first.stats["cache_key"] / "train-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = load(tokenizer, train=str(path), eval_fraction=0.2, streaming=True)
    assert any(issubclass(w.category, CacheWarning) for w in caught)
    assert not again.stats["cache_hit"] and materialize(again.train) == expected


def test_streaming_needs_the_cache(tokenizer, tmp_path):
    from leantrain.errors import DataError

    with pytest.raises(DataError, match="data.streaming needs data.cache"):
        load(tokenizer, train=str(write_rows(tmp_path / "t.csv", make_rows(20, 4))), streaming=True, cache=False)


MEMORY_PROBE = textwrap.dedent("""
    import json, sys, tracemalloc
    from pathlib import Path
    import pyarrow as pa
    from leantrain.data import streaming
    from leantrain.data.text import load_text_data
    from leantrain.models import load_tokenizer
    from leantrain.recipe import DataSection, ModelSection

    big, small, model = sys.argv[1:4]
    streaming.CHUNK_ROWS = 64
    tokenizer = load_tokenizer(ModelSection(name_or_path=model))

    def prepare(path, stream):
        settings = DataSection(train=path, eval_fraction=0.1, max_length=16, streaming=stream, cache_dir=f"{path}-{stream}")
        return load_text_data(settings, "causal-lm", tokenizer, 0, Path)

    prepare(small, True), prepare(small, False)  # imports and lazy set-up, outside the measurement
    tracemalloc.start()
    figures = {}
    for name, path, stream in (("fixed", small.replace(".jsonl", "-copy.jsonl"), True), ("streaming", big, True), ("in_memory", big, False)):
        if name == "fixed":
            Path(path).write_bytes(Path(small).read_bytes())
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        data = prepare(path, stream)
        figures[name] = tracemalloc.get_traced_memory()[1] - before
        figures[name + "_rows"] = len(data.train) + len(data.eval)
        figures[name + "_arrow_peak"] = pa.default_memory_pool().max_memory()  # process-wide high-water mark
        del data
    print(json.dumps(figures))
""")


def test_streaming_memory_stays_far_below_the_data_size(tmp_path, tiny_bert_dir):
    rng = random.Random(5)
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    with big.open("w", encoding="utf-8") as f:
        for i in range(4_000):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(60)) + f" {i}"}) + "\n")
    small.write_text("".join(json.dumps({"text": f"{WORDS[i]} {i}"}) + "\n" for i in range(10)), encoding="utf-8")
    size = big.stat().st_size
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(big), str(small), str(tiny_bert_dir)], env=env,
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    figures = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"file {size} bytes: {figures}")
    assert figures["streaming_rows"] == figures["in_memory_rows"] == 4_000
    # Growth with the data (beyond the fixed cost of preparing a 10-row file) stays under a
    # tenth of the file, for the Python heap and for Arrow's allocations alike ...
    bound = size // 10
    assert figures["streaming"] - figures["fixed"] < bound
    assert figures["streaming_arrow_peak"] - figures["fixed_arrow_peak"] < bound
    # ... while reading it into memory costs more than the file itself.
    assert figures["in_memory"] > size
