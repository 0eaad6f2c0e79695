"""Early stopping: scripted metric sequences, best-weight restore, and a real early stop."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from cuts_helpers import make_cut
from leantrain import UserError, train
from leantrain.cuts import CutStack


def fake_run(model=None):
    return SimpleNamespace(state=SimpleNamespace(step=0), model=model, extras={})


def feed(cut, values, metric="loss", run=None, every=10):
    """Evaluate ``values`` in order (one eval every ``every`` steps); return the per-eval results."""
    run = run or fake_run()
    results = []
    for value in values:
        run.state.step += every
        results.append(cut.on_eval_end({metric: value, "other": 0.0}, run))
    return results


def stop_index(results) -> int | None:
    return next((i for i, r in enumerate(results) if r), None)


def test_min_mode_stops_after_patience_bad_evals():
    cut = make_cut("early_stopping", metric="loss", mode="min", patience=3)
    results = feed(cut, [1.0, 0.8, 0.85, 0.9, 0.95])
    assert stop_index(results) == 4  # the 3rd evaluation without improvement on 0.8
    assert results[:4] == [None] * 4
    assert cut.best == 0.8 and cut.best_step == 20
    reason = results[4]
    assert "loss" in reason and "3 evaluations" in reason and "0.8000" in reason and "step 20" in reason


def test_patience_counter_resets_on_improvement():
    cut = make_cut("early_stopping", metric="loss", mode="min", patience=3)
    results = feed(cut, [1.0, 1.1, 1.2, 0.9, 1.0, 1.0, 1.0])
    assert stop_index(results) == 6
    assert cut.best == 0.9 and cut.best_step == 40


def test_min_delta_ignores_small_improvements():
    cut = make_cut("early_stopping", metric="loss", mode="min", patience=2, min_delta=0.01)
    results = feed(cut, [1.0, 0.995, 0.991])  # improvements of < 0.01 do not count
    assert stop_index(results) == 2
    assert cut.best == 1.0

    cut = make_cut("early_stopping", metric="loss", mode="min", patience=2, min_delta=0.01)
    assert stop_index(feed(cut, [1.0, 0.98, 0.96, 0.94])) is None  # 0.02 > 0.01: real progress
    assert cut.best == 0.94


def test_max_mode_and_equal_values_are_not_improvements():
    cut = make_cut("early_stopping", metric="score", mode="max", patience=2)
    results = feed(cut, [0.5, 0.6, 0.6, 0.55], metric="score")
    assert stop_index(results) == 3
    assert cut.best == 0.6
    # In max mode a falling metric is what gets worse: 0.4 after 0.5 is not an improvement.
    cut = make_cut("early_stopping", metric="score", mode="max", patience=1)
    assert feed(cut, [0.5, 0.4], metric="score")[1] is not None


@pytest.mark.parametrize(
    "metric,maximize", [("loss", False), ("perplexity", False), ("accuracy", True), ("majority_class_accuracy", True), ("f1", True)]
)
def test_auto_mode_picks_direction_from_metric_name(metric, maximize):
    cut = make_cut("early_stopping", metric=metric, patience=1)
    assert cut.maximize is maximize
    better, worse = (0.9, 0.8) if maximize else (0.8, 0.9)
    assert feed(cut, [worse, better], metric=metric) == [None, None]
    assert feed(cut, [worse], metric=metric)[0] is not None


def test_unknown_metric_is_a_user_error_naming_the_key():
    cut = make_cut("early_stopping", metric="acuracy")
    with pytest.raises(UserError, match=r"cuts\.early_stopping\.metric: 'acuracy'.*loss"):
        cut.on_eval_end({"loss": 1.0, "accuracy": 0.5}, fake_run())


def test_stack_reports_the_stop_reason():
    stack = CutStack([make_cut("early_stopping", patience=1)])
    run = fake_run()
    assert stack.on_eval_end({"loss": 1.0}, run) is None
    run.state.step = 5
    reason = stack.on_eval_end({"loss": 2.0}, run)
    assert reason and "loss did not improve" in reason


def _model_with_frozen_part():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[1].requires_grad_(False)
    return model


def _set(model, value: float):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_restore_best_puts_the_best_trainable_weights_back():
    model = _model_with_frozen_part()
    run = fake_run(model)
    cut = make_cut("early_stopping", patience=5)
    for weight, loss in [(1.0, 0.9), (2.0, 0.5), (3.0, 0.7)]:
        _set(model, weight)  # in place, as an optimizer does
        run.state.step += 10
        assert cut.on_eval_end({"loss": loss}, run) is None
    _set(model, 4.0)  # training went on after the last evaluation
    cut.on_fit_end(run)

    assert torch.equal(model[0].weight, torch.full_like(model[0].weight, 2.0))
    assert torch.equal(model[0].bias, torch.full_like(model[0].bias, 2.0))
    # Frozen weights are neither copied nor touched.
    assert all(n.startswith("0.") for n in cut.best_weights)
    assert torch.equal(model[1].weight, torch.full_like(model[1].weight, 4.0))
    assert run.extras["restored_best_step"] == 20
    assert run.extras["best_loss"] == 0.5


def test_restore_best_off_keeps_the_last_weights():
    model = _model_with_frozen_part()
    run = fake_run(model)
    cut = make_cut("early_stopping", restore_best=False)
    _set(model, 1.0)
    cut.on_eval_end({"loss": 0.1}, run)
    _set(model, 2.0)
    cut.on_eval_end({"loss": 0.9}, run)
    cut.on_fit_end(run)
    assert torch.equal(model[0].weight, torch.full_like(model[0].weight, 2.0))
    assert "restored_best_step" not in run.extras


def test_state_round_trip():
    cut = make_cut("early_stopping", patience=3)
    feed(cut, [1.0, 0.7, 0.8])
    other = make_cut("early_stopping", patience=3)
    other.load_state_dict(json.loads(json.dumps(cut.state_dict())))  # JSON-serialisable
    assert (other.best, other.best_step, other.bad_evals) == (0.7, 20, 1)
    # The restored counter carries on: two more bad evaluations stop the run.
    assert feed(other, [0.9, 0.9])[1] is not None


def test_real_run_stops_early_and_restores_the_best_weights(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    # A far too high learning rate: the eval loss gets worse and does not recover.
    recipe["train"].update(epochs=20, lr=0.5, eval_every=2, warmup_ratio=0.0, schedule="constant")
    recipe["cuts"] = {"early_stopping": {"patience": 2}}
    result = train(recipe, show_progress=False)
    summary = result.summary

    total_steps = 20 * 12  # 90 training rows, batches of 8
    assert summary["status"] == "early_stopped"
    assert "loss did not improve" in summary["stop_reason"]
    assert summary["steps"] < total_steps // 4
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["event"] == "eval"]
    assert len(evals) == summary["steps"] // 2
    best = min(e["loss"] for e in evals)
    # The best weights were put back: the final evaluation reproduces the best one, which
    # is clearly better than where training stopped.
    assert summary["extras"]["best_loss"] == pytest.approx(best)
    assert summary["eval"]["loss"] == pytest.approx(best, abs=1e-6)
    assert evals[-1]["loss"] > best + 1e-3
    assert summary["extras"]["restored_best_step"] == 2 * (1 + [e["loss"] for e in evals].index(best))


def test_run_that_does_not_stop_early_keeps_its_better_final_weights(cut_recipe):
    # The loss falls every epoch here, so the final weights are the best ones; a run with
    # early stopping that never triggers must end exactly where the same run without it ends.
    plain = copy.deepcopy(cut_recipe)
    plain["output"]["dir"] += "-plain"
    with_cut = copy.deepcopy(cut_recipe)
    with_cut["cuts"] = {"early_stopping": {"patience": 3}}
    baseline = train(plain, show_progress=False)
    result = train(with_cut, show_progress=False)
    assert result.summary["status"] == "completed"
    assert result.summary["eval"]["loss"] <= baseline.summary["eval"]["loss"] + 1e-6
