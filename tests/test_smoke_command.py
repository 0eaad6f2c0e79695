"""`leantrain smoke`: each check printed; the first failure stops with its reason."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testdata import make_topic_rows, write_csv

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def smoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leantrain", "smoke", *args], env=ENV, capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
def test_demo_recipe_passes_every_check_within_a_minute(tmp_path):
    data = write_csv(tmp_path / "topics.csv", make_topic_rows(200))
    started = time.time()
    done = smoke("examples/demo.yaml", "--set", f"data.train={data}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.time() - started < 60
    for check in ("recipe", "data and model", "shapes and finite loss", "overfit one batch", "checkpoint round trip"):
        assert any(line.strip().startswith("[pass] " + check) for line in done.stdout.splitlines()), check
    assert "smoke test passed" in done.stdout


def test_missing_column_fails_at_the_data_check(tmp_path, tiny_bert_dir):
    data = write_csv(tmp_path / "d.csv", [{"sentence": "hello there", "label": "a"}, {"sentence": "bye", "label": "b"}])
    done = smoke(str(REPO / "examples/demo.yaml"), "--set", f"data.train={data}", "--set", f"model.name_or_path={tiny_bert_dir}")
    assert done.returncode == 2
    assert "[FAIL] data and model" in done.stdout
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "missing column 'text'" in err[0]


def test_exploding_learning_rate_fails_the_overfit_check_with_the_reason(tmp_path, tiny_bert_dir):
    data = write_csv(tmp_path / "d.csv", make_topic_rows(64))
    done = smoke(str(REPO / "examples/demo.yaml"), "--set", f"data.train={data}",
                 "--set", f"model.name_or_path={tiny_bert_dir}", "--set", "model.from_scratch=true",
                 "--set", "cuts.lora=false", "--set", "cuts.frozen_prefix=false", "--set", "train.lr=1e4")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "[FAIL] overfit one batch" in done.stdout
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "train.lr=10000.0" in err[0] and "overfit" in err[0]
    assert "[pass] shapes and finite loss" in done.stdout


def test_a_recipe_with_early_stopping_passes_smoke(tmp_path, tiny_bert_dir):
    # The smoke run evaluates nothing; early stopping must not mistake that for a missing metric.
    data = write_csv(tmp_path / "d.csv", make_topic_rows(64))
    done = smoke(str(REPO / "examples/demo.yaml"), "--set", f"data.train={data}", "--set", f"model.name_or_path={tiny_bert_dir}", "--set", "model.from_scratch=true",
                 "--set", "cuts.lora=false", "--set", "cuts.frozen_prefix=false",
                 "--set", "cuts.early_stopping.metric=accuracy", "--set", "cuts.early_stopping.patience=2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[pass] overfit one batch" in done.stdout and "smoke test passed" in done.stdout


def test_early_stopping_without_eval_data_is_refused_in_one_line(tmp_path, tiny_bert_dir):
    data = write_csv(tmp_path / "d.csv", make_topic_rows(64))
    done = smoke(str(REPO / "examples/demo.yaml"), "--set", f"data.train={data}", "--set", f"model.name_or_path={tiny_bert_dir}", "--set", "model.from_scratch=true",
                 "--set", "data.eval_fraction=0", "--set", "cuts.early_stopping=true")
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "cuts.early_stopping needs eval data" in err[0] and "data.eval_fraction" in err[0]
