"""`leantrain data prepare RECIPE`: the data section as training runs it, stats printed, cache filled."""
from __future__ import annotations

import json

import yaml
from data_helpers import write_rows

from leantrain.cli import main


def write_recipe(path, tiny_bert_dir, data: dict):
    recipe = {"model": {"name_or_path": str(tiny_bert_dir)}, "data": data, "train": {"seed": 3}}
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def run_prepare(capsys, *args) -> tuple[str, dict]:
    assert main(["data", "prepare", *args]) == 0
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    return first, json.loads(rest)


def test_prepare_prints_stats_and_fills_the_cache(tmp_path, tiny_bert_dir, capsys, private_cache):
    topics = ["food", "sports", "tech"]
    rows = [{"text": f"a distinct {topics[i % 3]} sentence with number {i}", "label": topics[i % 3]} for i in range(60)]
    rows += [dict(rows[0]), {"text": rows[1]["text"].upper(), "label": rows[1]["label"]}]  # two exact duplicates
    write_rows(tmp_path / "topics.csv", rows)
    # A relative data path resolves beside the recipe, as for `leantrain train`.
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_bert_dir, {"train": "topics.csv", "eval_fraction": 0.2, "curate": True})

    line, stats = run_prepare(capsys, str(recipe))
    assert line.startswith("prepared ") and "tokenized and cached" in line
    assert stats["rows_in"] == 62 and stats["cache_hit"] is False
    assert stats["duplicates_removed"] >= 1  # at least one copy fell in training (or leaked eval)
    assert stats["rows_out"] == stats["rows_train"] + stats["rows_eval"] == 62 - stats["duplicates_removed"]
    assert stats["curation"]["exact_duplicates"] >= 1 and stats["label_names"] == ["food", "sports", "tech"]
    assert [p.name for p in private_cache.iterdir()] == [stats["cache_key"]]

    line, again = run_prepare(capsys, str(recipe))
    assert "cache hit" in line and again["cache_hit"] is True and again["cache_key"] == stats["cache_key"]

    _, other = run_prepare(capsys, str(recipe), "--set", "train.seed=4")  # the seed moves the split: a miss
    assert other["cache_hit"] is False and other["cache_key"] != stats["cache_key"]


def test_prepare_with_bad_data_is_one_line_exit_2(tmp_path, tiny_bert_dir, capsys):
    (tmp_path / "bad.csv").write_text("body,label\nx,a\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_bert_dir, {"train": "bad.csv"})
    assert main(["data", "prepare", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv" in err[0] and "missing column 'text'" in err[0]


def test_cache_key_depends_on_the_inputs_only(tmp_path, tiny_bert_dir):
    """prepare, train with its smoke test first, train without it, each in a fresh process:
    one key, one cache entry (a key that depended on what the process did before would
    make the next run re-tokenize)."""
    import os
    import subprocess
    import sys

    topics = ["food", "sports", "tech"]
    write_rows(tmp_path / "topics.csv", [{"text": f"a {topics[i % 3]} sentence {i}", "label": topics[i % 3]} for i in range(48)])
    recipe = {"model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
              "data": {"train": "topics.csv", "eval_fraction": 0.25, "max_length": 16, "cache_dir": str(tmp_path / "cache")},
              "train": {"epochs": 1, "batch_size": 8}, "output": {"dir": str(tmp_path / "run"), "save_model": False}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def leantrain(*args) -> str:
        done = subprocess.run([sys.executable, "-m", "leantrain", *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    keys = []
    for _ in range(2):  # two fresh processes
        keys.append(json.loads(leantrain("data", "prepare", str(path)).partition("\n")[2])["cache_key"])
    for flags in ([], ["--no-smoke"]):
        leantrain("train", str(path), *flags)
        keys.append(json.loads((tmp_path / "run" / "summary.json").read_text())["data"]["cache_key"])
    assert len(set(keys)) == 1, keys
    assert [p.name for p in (tmp_path / "cache").iterdir()] == keys[:1]
