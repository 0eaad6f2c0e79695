"""Metrics sinks: TensorBoard event files and MLflow mirror metrics.jsonl, which stays the source of truth."""
from __future__ import annotations

import copy
import json
import sys
import types

import pytest

from leantrain import train
from leantrain.observe import sinks
from leantrain.errors import UserError


def _without_mlflow(load, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    return load()


class FakeMlflow(types.ModuleType):
    """Records what an MLflow client would have been told."""

    def __init__(self):
        super().__init__("mlflow")
        self.params, self.metrics, self.runs, self.ended = {}, [], [], 0

    def start_run(self, run_name):
        self.runs.append(run_name)

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, values, step):
        self.metrics.append((step, values))

    def end_run(self):
        self.ended += 1


def test_tensorboard_and_mlflow_mirror_metrics_jsonl(tiny_recipe, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fake = FakeMlflow()
    monkeypatch.setattr(sinks, "load_mlflow", lambda: fake)
    recipe = copy.deepcopy(tiny_recipe)
    recipe["output"] = {**recipe["output"], "tensorboard": True, "mlflow": True}
    run_dir = train(recipe, show_progress=False).run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = {r["step"]: r["loss"] for r in records if r["event"] == "train"}
    eval_accuracy = {r["step"]: r["accuracy"] for r in records if r["event"] == "eval"}
    assert train_losses and eval_accuracy

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(train_losses)
    assert {e.step: e.value for e in events.Scalars("eval/accuracy")} == pytest.approx(eval_accuracy)
    assert "train/samples_per_second" in events.Tags()["scalars"]

    assert fake.runs == [run_dir.name] and fake.ended == 1
    assert fake.params["train.lr"] == str(recipe["train"]["lr"])
    logged = {step: values["train/loss"] for step, values in fake.metrics if "train/loss" in values}
    assert logged == pytest.approx(train_losses)


def test_mlflow_requested_but_missing_is_a_clear_error(tiny_recipe, monkeypatch):
    real = sinks.load_mlflow
    # `import mlflow` fails only inside the sink: transformers' own probe at model load stays untouched.
    monkeypatch.setattr(sinks, "load_mlflow", lambda: _without_mlflow(real, monkeypatch))
    recipe = copy.deepcopy(tiny_recipe)
    recipe["output"] = {**recipe["output"], "mlflow": True}
    with pytest.raises(UserError, match="output.mlflow is true but `mlflow` is not installed"):
        train(recipe, show_progress=False)
