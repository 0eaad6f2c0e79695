"""Learning-rate schedules, step caps, budgets, and the metrics log that records them."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import leantrain

PEAK = 0.01


def rows(n: int = 200):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True)
    return [(x[i], y[i]) for i in range(n)]


def mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def run(tmp_path, train=None, budget=None, eval_data=None, **kwargs):
    torch.manual_seed(0)
    recipe = {
        "train": {"epochs": 1, "batch_size": 10, "lr": PEAK, "seed": 0, "log_every": 1, **(train or {})},
        "budget": budget or {},
        "output": {"dir": str(tmp_path / "run")},
    }
    return leantrain.train(recipe, model=nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)),
                           loss_fn=mse, train_data=rows(), eval_data=eval_data, show_progress=False, **kwargs)


def events(result, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e for e in lines if e["event"] == kind]


def expected_lr(schedule: str, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return PEAK * step / warmup
    progress = (step - warmup) / (total - warmup)
    if schedule == "constant":
        return PEAK
    if schedule == "linear":
        return PEAK * (1 - progress)
    return PEAK * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_warms_up_then_follows_its_shape(tmp_path, schedule):
    result = run(tmp_path, {"schedule": schedule, "warmup_ratio": 0.2})
    train_lines = events(result, "train")
    total, warmup = 20, 4  # 200 rows / batch 10; 20% warmup
    assert [e["step"] for e in train_lines] == list(range(1, total + 1))
    lrs = [e["lr"] for e in train_lines]

    # warmup: rising linearly from 0 to the peak
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup]))
    assert lrs[warmup - 1] == pytest.approx(PEAK)
    after = lrs[warmup:]
    if schedule == "constant":
        assert after == pytest.approx([PEAK] * len(after))
    else:
        assert all(a > b for a, b in zip(after, after[1:]))  # decaying ...
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # ... to zero at the last step
        halfway = lrs[warmup - 1 + (total - warmup) // 2]
        # linear is at half the peak halfway through the decay; cosine too (cos(pi/2) = 0),
        # but cosine stays higher early on and lower late
        assert halfway == pytest.approx(PEAK / 2)
        quarter = lrs[warmup - 1 + (total - warmup) // 4]
        assert quarter == pytest.approx(0.75 * PEAK if schedule == "linear" else PEAK * (1 + math.cos(math.pi / 4)) / 2)
    for step, lr in enumerate(lrs, 1):
        assert lr == pytest.approx(expected_lr(schedule, step, total, warmup), abs=1e-12), step


def test_no_warmup_starts_at_the_peak(tmp_path):
    lrs = [e["lr"] for e in events(run(tmp_path, {"schedule": "cosine", "warmup_ratio": 0.0}), "train")]
    assert lrs[0] == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi / 20)))
    assert max(lrs) <= PEAK


def test_max_steps_caps_the_run_and_sizes_the_schedule(tmp_path):
    result = run(tmp_path, {"epochs": 5, "max_steps": 7, "schedule": "linear"})
    assert result.summary["status"] == "completed"
    assert result.summary["steps"] == 7
    assert result.summary["samples_seen"] == 70
    lrs = [e["lr"] for e in events(result, "train")]
    assert len(lrs) == 7
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the decay ends at the cap, not after 5 epochs
    assert result.summary["epochs"] == pytest.approx(7 / 20)


@pytest.mark.parametrize(
    "budget,reason",
    [({"max_hours": 1e-7}, "budget.max_hours"), ({"max_usd": 1e-9}, "budget.max_usd")],
)
def test_a_tiny_budget_stops_the_run_gracefully(tmp_path, budget, reason):
    result = run(tmp_path, {"epochs": 3}, budget=budget, eval_data=rows(20))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "budget_exhausted"
    assert reason in summary["stop_reason"]
    assert summary["steps"] == 1 < 60
    assert "loss" in summary["eval"]  # still evaluated and saved
    assert (result.run_dir / "model" / "model.safetensors").is_file()


def test_a_generous_budget_does_not_stop_the_run(tmp_path):
    result = run(tmp_path, budget={"max_hours": 1.0, "max_usd": 100.0})
    assert result.summary["status"] == "completed" and result.summary["steps"] == 20


def test_metrics_lines_carry_progress_and_eval_lines_carry_eval_metrics(tiny_recipe):
    tiny_recipe["train"].update(epochs=1, log_every=1, eval_every=4)
    result = leantrain.train(tiny_recipe, show_progress=False)
    total = result.summary["steps"]
    assert total == 12  # 90 training rows / batch 8
    train_lines = events(result, "train")
    assert [e["step"] for e in train_lines] == list(range(1, total + 1))
    for e in train_lines:
        assert {"step", "epoch", "loss", "lr", "samples_per_second", "wall_seconds"} <= set(e)
        assert e["epoch"] == 0 and e["loss"] > 0 and e["samples_per_second"] > 0
    walls = [e["wall_seconds"] for e in train_lines]
    assert walls == sorted(walls)

    eval_lines = events(result, "eval")
    eval_steps = [e["step"] for e in eval_lines]
    assert eval_steps[:2] == [4, 8]  # every eval_every steps (and possibly at the very end)
    assert all(step % 4 == 0 or step == total for step in eval_steps)
    for e in eval_lines + events(result, "final_eval"):
        assert {"loss", "accuracy", "majority_class_accuracy", "step", "wall_seconds"} <= set(e)
        assert 0 <= e["accuracy"] <= 1
    final = events(result, "final_eval")
    assert len(final) == 1 and final[0]["step"] == total
    assert final[0]["accuracy"] == result.summary["eval"]["accuracy"]


def test_budget_guard_warns_once_early_when_the_projection_exceeds_the_budget(capsys):
    from types import SimpleNamespace

    from leantrain.engine.run import as_recipe, budget_guard
    from leantrain.engine.state import TrainState

    guard = budget_guard(as_recipe({"budget": {"max_hours": 0.01}}))  # 36 s
    logged = []
    fake = SimpleNamespace(state=TrainState(step=5, train_seconds=5.0), total_steps=100, log=logged.append, world_size=1)
    assert guard(fake) is None  # 5 s spent: keep going...
    assert [e["event"] for e in logged] == ["budget_warning"]  # ...but 100 s projected > 36 s: say so now
    assert "budget.max_hours=0.01" in capsys.readouterr().err
    fake.state.step, fake.state.train_seconds = 6, 6.0
    assert guard(fake) is None and len(logged) == 1  # once
    fake.state.train_seconds = 40.0
    assert "budget.max_hours" in guard(fake)  # spent: stop
