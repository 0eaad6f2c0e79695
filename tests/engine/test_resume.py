"""Exact resume: kill -9 at random moments (one mid-checkpoint), SIGTERM, divergence.

Each interrupted run is resumed with `--resume auto` until it completes; its final
weights must be bitwise identical to an uninterrupted run of the same recipe.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from leantrain import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def recipe_file(tmp_path, tiny_bert_dir, topic_csv) -> Path:
    recipe = {
        "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},  # dropout on: RNG matters
        "data": {"train": str(topic_csv), "eval_fraction": 0.25, "max_length": 32},
        "train": {"epochs": 12, "batch_size": 8, "lr": 1e-3, "seed": 3, "log_every": 1, "eval_every": 7,
                  "checkpoint_every": 4, "threads": 1},
        "cuts": {"early_stopping": {"patience": 1000, "metric": "loss"}},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def reference_weights(recipe_file: Path, tmp_path: Path) -> dict:
    result = train(recipe_file, overrides=[f"output.dir={tmp_path / 'reference'}"], show_progress=False)
    assert result.summary["status"] == "completed"
    return load_file(str(tmp_path / "reference" / "model" / "model.safetensors"))


def start(recipe_file: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "leantrain", "train", str(recipe_file), "--resume", "auto", "--no-smoke", "--quiet"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)
    except (OSError, ValueError):
        return 0


def wait_for_step(proc, run_dir: Path, step: int, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if last_step(run_dir) >= step:
            return True
        time.sleep(0.01)
    return False


def assert_same_weights(run_dir: Path, reference: dict) -> None:
    final = load_file(str(run_dir / "model" / "model.safetensors"))
    assert final.keys() == reference.keys()
    different = [k for k in final if not torch.equal(final[k], reference[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_five_sigkills_one_mid_checkpoint_then_resume_is_bitwise_exact(recipe_file, tmp_path):
    reference = reference_weights(recipe_file, tmp_path)
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    rng = random.Random(0)
    kills = mid_write = 0
    while kills < 5:
        proc = start(recipe_file)
        resumed_at = last_step(run_dir)
        if not wait_for_step(proc, run_dir, resumed_at + 1):
            break  # finished before we could kill it
        if mid_write == 0:
            # Kill the moment a checkpoint is being written (its temporary folder exists).
            deadline = time.time() + 30
            while time.time() < deadline and proc.poll() is None:
                if any(p.name.startswith(".tmp-") for p in ckpt_dir.glob(".tmp-*")):
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait()
            if any(ckpt_dir.glob(".tmp-*")):
                mid_write += 1
        else:
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += proc.returncode == -signal.SIGKILL
    assert kills == 5 and mid_write == 1
    proc = start(recipe_file)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["resumed_from_steps"]) >= 1
    assert_same_weights(run_dir, reference)
    # The metrics log has no duplicated steps from the replayed stretch.
    train_steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["event"] == "train"]
    assert train_steps == sorted(set(train_steps))


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_checkpoints_and_exits_quickly_then_resume_finishes(recipe_file, tmp_path, sig, code):
    reference = reference_weights(recipe_file, tmp_path)
    run_dir = tmp_path / "run"
    proc = start(recipe_file)
    assert wait_for_step(proc, run_dir, 3)
    sent = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert time.time() - sent < 10
    assert proc.returncode == code, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["signal"] == signal.Signals(sig).name
    from leantrain.engine.checkpoint import find_valid

    latest = find_valid(run_dir / "checkpoints", warn=pytest.fail)
    assert latest is not None and int(latest.name.split("-")[1]) == summary["steps"]

    proc = start(recipe_file)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_same_weights(run_dir, reference)


def test_fresh_start_over_an_unfinished_run_is_refused(recipe_file, tmp_path):
    proc = start(recipe_file)
    assert wait_for_step(proc, tmp_path / "run", 5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    cmd = [sys.executable, "-m", "leantrain", "train", str(recipe_file), "--no-smoke", "--quiet"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--resume auto" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_nan_losses_are_skipped_then_the_run_stops_as_diverged(tmp_path):
    model = torch.nn.Linear(4, 2)
    data = [{"x": torch.randn(4), "y": torch.tensor(i % 2)} for i in range(64)]
    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(m(batch["x"]), batch["y"])
        return loss * float("nan") if calls["n"] > 3 else loss  # diverges after 3 good steps

    recipe = {"train": {"epochs": 5, "batch_size": 4, "max_bad_steps": 4, "checkpoint_every": 1, "seed": 0},
              "output": {"dir": str(tmp_path / "nan")}}
    result = train(recipe, model=model, loss_fn=loss_fn, train_data=data, show_progress=False)
    summary = result.summary
    assert summary["status"] == "diverged" and summary["skipped_steps"] == 4
    assert summary["steps"] == 7
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN reached the weights
    latest = (tmp_path / "nan" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-000000003"  # the last good step's checkpoint is kept
