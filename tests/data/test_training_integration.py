"""The data pipeline inside `train()`: a text folder, curated, tokenized once across runs."""
from __future__ import annotations

from leantrain import train


def test_two_runs_on_a_curated_text_folder_tokenize_once(tmp_path, tiny_bert_dir, private_cache):
    root = tmp_path / "topics"
    vocab = {"food": ["bread", "soup", "cheese", "salad"], "tech": ["kernel", "server", "compiler", "laptop"]}
    for label, words in vocab.items():
        (root / label).mkdir(parents=True)
        for i in range(24):
            (root / label / f"{i:02d}.txt").write_text(f"{words[i % 4]} {words[(i + 1) % 4]} item {i} of {label}", encoding="utf-8")
        (root / label / "copy.txt").write_text(f"{words[0].upper()} {words[1]} item 0 of {label}", encoding="utf-8")
    recipe = {
        "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
        "data": {"train": str(root), "eval_fraction": 0.25, "max_length": 16, "curate": True},
        "train": {"epochs": 1, "batch_size": 8, "seed": 0},
        "output": {"dir": str(tmp_path / "run"), "save_model": False},
    }
    first = train(recipe, show_progress=False).summary
    assert first["status"] == "completed"
    data = first["data"]
    assert data["rows_in"] == 50 and data["cache_hit"] is False
    assert data["duplicates_removed"] >= 1 and data["rows_train"] + data["rows_eval"] == 50 - data["duplicates_removed"]
    assert len(list(private_cache.iterdir())) == 1

    recipe["output"]["dir"] = str(tmp_path / "run2")
    second = train(recipe, show_progress=False).summary
    assert second["data"]["cache_hit"] is True and second["data"]["rows_train"] == data["rows_train"]
    assert second["steps"] == first["steps"]
