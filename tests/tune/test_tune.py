"""`leantrain tune` end to end on the tiny BERT: trials as real runs stopped at the target,
the winner's YAML, the report, the planner's skip, and a search resumed after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState

from leantrain.cli import main
from leantrain.recipe import load_recipe
from leantrain.tune.report import pareto_front
from leantrain.tune.search import STUDY, fits
from leantrain.tune.space import space_for, suggest


@pytest.fixture
def recipe_file(tmp_path, tiny_recipe):
    recipe = {**tiny_recipe, "cuts": {"lora": {"target_modules": ["query", "value"]}}}
    recipe["train"] = {**recipe["train"], "epochs": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _study(out):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(out / "study.journal"))))


def test_every_drawn_trial_is_a_valid_recipe(recipe_file):
    recipe = load_recipe(recipe_file)
    space = space_for(recipe)
    assert space.lora and space.ranks and space.wide_targets == ("query", "key", "value", "dense")
    trial = FixedTrial({"lr": 2e-3, "batch_size": 4, "epochs": 2, "lora_r": 16, "lora_targets": "wide"})
    sets = suggest(trial, space)
    tuned = load_recipe(recipe_file, sets)
    assert (tuned.train.lr, tuned.train.batch_size, tuned.train.epochs) == (2e-3, 4, 2)
    assert tuned.cuts.lora.r == 16 and tuned.cuts.lora.target_modules == ["query", "key", "value", "dense"]


def test_pareto_front_keeps_only_undominated_trials():
    rows = [{"trial": i, "status": "completed", "cost_usd": c, "metric": m}
            for i, (c, m) in enumerate([(1.0, 0.5), (2.0, 0.7), (2.5, 0.6), (3.0, 0.7), (0.5, 0.4)])]
    assert [r["trial"] for r in pareto_front(rows, higher_is_better=True)] == [4, 0, 1]
    assert [r["trial"] for r in pareto_front(rows, higher_is_better=False)] == [4]


def test_planner_skips_a_trial_that_cannot_fit(tmp_path, bundled_model_dir, topic_csv):
    from transformers import LlamaConfig

    from testdata import copy_tokenizer

    big = tmp_path / "big"
    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=30522).save_pretrained(big)
    copy_tokenizer(bundled_model_dir, big)
    recipe = load_recipe(_write(tmp_path / "big.yaml", {
        "model": {"name_or_path": str(big), "task": "causal-lm"}, "data": {"train": str(topic_csv), "max_length": 64},
        "hardware": {"name": "t4"}, "train": {"batch_size": 8}}))
    why = fits(recipe)
    assert why is not None and "GB >" in why and "t4" in why.lower()


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_tune_stops_trials_at_the_target_and_writes_the_cheapest(recipe_file, tmp_path, capsys):
    out = tmp_path / "tune"
    # Any evaluation meets accuracy >= 0: every trial stops at its first evaluation (step 3).
    code = main(["tune", str(recipe_file), "--target", "accuracy=0.0", "--trials", "2", "--eval-every", "3",
                 "--output", str(out)])
    assert code == 0
    result = json.loads((out / "tune.json").read_text())
    done = [r for r in result["trials"] if r["status"] == "reached_target"]
    assert len(done) == 2 and all(r["steps"] == 3 for r in done)
    assert result["winner"]["cost_to_target_usd"] == min(r["cost_to_target_usd"] for r in done)
    assert result["search_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in result["trials"]), rel=1e-6)
    for r in done:  # a trial stopped at the target did not train on to its last step
        summary = json.loads(open(os.path.join(r["run_dir"], "summary.json")).read())
        assert summary["steps"] < load_recipe(recipe_file, r["sets"]).train.epochs * 12
    best = load_recipe(out / "best.yaml")  # the user's recipe with the winner's values, loadable as it is
    winner_recipe = load_recipe(recipe_file, result["winner"]["sets"])
    assert best.train.lr == winner_recipe.train.lr and best.cuts.lora.r == winner_recipe.cuts.lora.r
    # Run as it is, the returned recipe stops where the search measured its cost.
    assert best.cuts.early_stopping.enabled and best.cuts.early_stopping.target == 0.0
    from leantrain import train

    rerun = train(load_recipe(out / "best.yaml", [f"output.dir={tmp_path / 'rerun'}"]), show_progress=False)
    assert rerun.summary["steps"] == result["winner"]["steps"] == 3 and "reached the target" in rerun.summary["stop_reason"]
    assert (out / "cost_vs_metric.png").stat().st_size > 0 and "| trial |" in (out / "report.md").read_text()


def test_tune_resumes_after_sigkill_without_redoing_finished_trials(recipe_file, tmp_path):
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "leantrain", "tune", str(recipe_file), "--target", "accuracy=1.01", "--trials", "3",
           "--eval-every", "2", "--set", "train.epochs=2", "--output", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    killed_during = None
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
        if not (out / "study.journal").exists():
            continue
        try:
            trials = _study(out).get_trials()
        except KeyError:  # the journal file exists a moment before the study record is written to it
            continue
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if finished and running:
            run_dir = next((d for d in (out / "trials").iterdir() if (d / "metrics.jsonl").exists()
                            and d.name not in {t.user_attrs.get("run_dir", "").rsplit("/", 1)[-1] for t in finished}), None)
            if run_dir is not None:
                first.send_signal(signal.SIGKILL)
                killed_during = running[0].number
                break
    first.wait(30)
    assert killed_during is not None, "the search finished or stalled before a second trial started"
    before = {t.number: t.user_attrs["run_dir"] for t in _study(out).get_trials() if t.state != TrialState.RUNNING}
    time.sleep(3)  # the orphaned trial got SIGTERM (parent-death signal) and checkpoints
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "resuming: 1 interrupted trial" in done.stdout
    trials = _study(out).get_trials()
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    resumed = [t for t in trials if t.user_attrs.get("resumed_from_trial") == killed_during]
    assert len(resumed) == 1
    for number, run_dir in before.items():  # finished trials ran once: one attempt each, not repeated
        attempts = [json.loads(line) for line in open(os.path.join(run_dir, "attempts.jsonl"))]
        assert len({a["started"] for a in attempts}) == 1, number
    resumed_dir = resumed[0].user_attrs["run_dir"]
    attempts = {json.loads(line)["started"] for line in open(os.path.join(resumed_dir, "attempts.jsonl"))}
    assert len(attempts) == 2  # the interrupted trial went on in its own run directory
