"""`leantrain compress`: writes a loadable model and compress.json with both sides measured."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from leantrain.compress import load_compressed
from leantrain.compress.measure import eval_data, evaluate, run_recipe


def test_prune_and_quantize_writes_model_and_report(tiny_run, tmp_path):
    from leantrain.cli import main

    out = tmp_path / "out"
    code = main(["compress", str(tiny_run), "--prune", "ffn:0.5", "--recover-epochs", "1", "--quantize", "int8",
                 "--repeats", "2", "--latency-batch", "4", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "compress.json").read_text())
    for key in ("size_bytes_before", "size_bytes_after", "latency_ms_before", "latency_ms_after"):
        assert report[key] > 0, key
    assert report["size_bytes_after"] < report["size_bytes_before"]
    assert report["linear_weight_bytes_after"] * 3 < report["linear_weight_bytes_before"]
    assert report["steps"]["prune"]["ffn_neurons_after"] < report["steps"]["prune"]["ffn_neurons_before"]
    assert report["steps"]["recovery"]["steps"] > 0
    smoothing = report["steps"]["quantize"]["smoothing"]
    assert smoothing["calibration_split"] == "train" and smoothing["calibration_examples"] > 0

    model, tokenizer, meta = load_compressed(out / "model")
    assert meta["compressed"]["quantize"] == "int8"
    # The label names travel in the standard config.json, not only in leantrain.json.
    labels = json.loads((tiny_run / "model" / "leantrain.json").read_text())["labels"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(labels))] == labels and len(labels) == 3
    assert model.config.intermediate_size == report["steps"]["prune"]["ffn_neurons_after"]
    # The saved model holds a smoothing vector on exactly the layers calibration smoothed.
    smoothed = {name for name, m in model.named_modules() if getattr(m, "smooth_inv_scale", None) is not None}
    assert smoothed and smoothed == set(smoothing["alpha_by_layer"])
    # The saved model is the measured one: its eval matches the report's "after".
    assert evaluate(model, eval_data(run_recipe(tiny_run), tokenizer)) == report["eval_after"]


def test_bad_prune_spec_is_one_line_error(tiny_run, tmp_path):
    done = subprocess.run([sys.executable, "-m", "leantrain", "compress", str(tiny_run), "--prune", "rows:2",
                           "--output", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "--prune 'rows:2'" in done.stderr and "ffn" in done.stderr


def test_compress_works_from_the_run_directory_alone(tmp_path, tiny_bert_dir, monkeypatch):
    """A recipe with a data path relative to its own folder, trained from another working
    directory: the run's config.yaml holds the resolved path, so compress needs no --recipe."""
    import yaml

    from leantrain.cli import main
    from testdata import make_topic_rows, write_csv

    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "topics.csv", make_topic_rows(60, seed=1))
    (tmp_path / "recipes").mkdir()
    recipe = {"model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
              "data": {"train": "../data/topics.csv", "eval_fraction": 0.25, "max_length": 32},
              "cuts": {"lora": {"r": 4}}, "train": {"epochs": 1, "batch_size": 16},
              "output": {"dir": str(tmp_path / "run")}}
    (tmp_path / "recipes" / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    monkeypatch.chdir(tmp_path / "recipes")
    assert main(["train", "r.yaml", "--no-smoke"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["train"] == str((tmp_path / "data" / "topics.csv").resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the relative path means nothing from here
    assert main(["compress", str(tmp_path / "run"), "--quantize", "int8", "--repeats", "1",
                 "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "compress.json").read_text())["eval_after"]["accuracy"] >= 0
