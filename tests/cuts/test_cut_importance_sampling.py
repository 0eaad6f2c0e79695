"""Importance sampling: draws follow the recent loss, weights keep the gradient
unbiased, the loop really applies the weights, and a resumed run draws the same examples."""
from __future__ import annotations

import copy
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from cuts_helpers import make_cut, run_context
from leantrain import train
from leantrain.cuts.importance_sampling import ImportanceSampling
from leantrain.data.batching import epoch_order
from leantrain.errors import UserError


def _fed_cut(losses: torch.Tensor, batch_size: int = 10, **settings):
    """A cut that has seen ``losses`` (one per example) and planned epoch 1."""
    cut = make_cut("importance_sampling", warmup_epochs=0, smoothing=0.0, **settings)
    run = run_context()
    run.train = SimpleNamespace(seed=0, bucket_by_length=False)
    n = losses.numel()
    cut.order_batches(epoch_order(n, batch_size, 0, 0), 0, run, None)  # nothing seen yet: uniform
    cut.on_example_losses(torch.arange(n), losses, run)
    run.state.epoch = 1
    batches = cut.order_batches(epoch_order(n, batch_size, 0, 1), 1, run, None)
    return cut, run, batches


def test_high_loss_examples_are_drawn_more_often_and_weighted_down():
    n, hard = 2000, 200
    losses = torch.ones(n)
    losses[:hard] = 9.0
    cut, run, batches = _fed_cut(losses, uniform_mix=0.3)
    drawn = torch.tensor([i for b in batches for i in b])
    assert drawn.numel() == n and [len(b) for b in batches] == [10] * (n // 10)  # an epoch is still N draws
    p_hard = 0.7 * 9.0 / losses.sum() + 0.3 / n
    share = (drawn < hard).float().mean().item()
    assert share == pytest.approx(hard * p_hard.item(), abs=0.04)  # ~0.38, against 0.10 uniform
    assert len(set(drawn.tolist())) < n  # with replacement
    weights = cut.example_weights(torch.tensor([0, hard]), run)
    assert weights[0].item() == pytest.approx(1 / (n * p_hard.item()), rel=1e-4)
    assert weights[0] < 1 < weights[1] <= 1 / 0.3 + 1e-6  # capped by the uniform share


def test_weighted_draws_estimate_the_full_data_loss_without_bias():
    torch.manual_seed(3)
    losses = torch.distributions.Exponential(1.0).sample((20000,)) ** 2
    cut, run, batches = _fed_cut(losses, batch_size=100)
    drawn = torch.tensor([i for b in batches for i in b])
    weighted_mean = (cut.example_weights(drawn, run) * losses[drawn]).mean()
    plain_mean = losses[drawn].mean()
    assert weighted_mean.item() == pytest.approx(losses.mean().item(), rel=0.03)
    assert plain_mean > 1.2 * losses.mean()  # without the weights the estimate is biased up
    unweighted, run2, _ = _fed_cut(losses, batch_size=100, reweight=False)
    assert unweighted.example_weights(drawn, run2) is None


def test_one_loss_per_example_is_required():
    cut, run, _ = _fed_cut(torch.ones(20))
    with pytest.raises(UserError, match="one loss per example"):
        cut.on_example_losses(torch.arange(4), torch.ones(1), run)


def _recipe(tiny_recipe, **train_settings) -> dict:
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"].update({"epochs": 3, "weight_decay": 0.0, "checkpoint_every": 100, **train_settings})
    recipe["cuts"] = {"importance_sampling": {"warmup_epochs": 1}}
    return recipe


def test_the_loop_multiplies_each_example_loss_by_its_weight(tiny_recipe, monkeypatch):
    from leantrain.engine.session import build_session
    from leantrain.engine.run import as_recipe

    recipe = _recipe(tiny_recipe, epochs=1)
    recipe["cuts"]["importance_sampling"]["warmup_epochs"] = 0
    initial = {n: p.detach().clone() for n, p in build_session(as_recipe(copy.deepcopy(recipe))).run.model.named_parameters()}
    # Zero weights: every loss vanishes, so Adam takes zero steps and nothing moves.
    monkeypatch.setattr(ImportanceSampling, "example_weights", lambda self, idx, run: torch.zeros(len(idx)))
    frozen = train(copy.deepcopy(recipe), show_progress=False).model
    assert all(torch.equal(p, initial[n]) for n, p in frozen.named_parameters())
    monkeypatch.undo()
    trained = train(recipe, show_progress=False).model
    assert any(not torch.equal(p, initial[n]) for n, p in trained.named_parameters())


def test_resumed_run_draws_the_same_examples_and_ends_on_the_same_weights(tiny_recipe, tmp_path, monkeypatch):
    real = ImportanceSampling.on_example_losses

    def run_recording(out_dir, kill_at=None, resume=None):
        seen: list[int] = []
        killed = []

        def recording(self, indices, losses, run):
            seen.extend(indices.tolist())
            if run.state.step == kill_at and not killed:
                killed.append(os.kill(os.getpid(), signal.SIGTERM))  # a preemption in the sampled epoch
            return real(self, indices, losses, run)

        monkeypatch.setattr(ImportanceSampling, "on_example_losses", recording)
        recipe = _recipe(tiny_recipe)
        recipe["output"]["dir"] = str(out_dir)
        return train(recipe, show_progress=False, resume=resume), seen

    reference, everything = run_recording(tmp_path / "a")
    extras = reference.summary["extras"]["importance_sampling"]
    assert extras["epoch"] == 2 and extras["effective_sample_fraction"] < 1.0
    per_epoch = len(everything) // 3
    assert len(set(everything[per_epoch:2 * per_epoch])) < per_epoch  # epoch 1 is drawn, with repeats

    stopped, first = run_recording(tmp_path / "b", kill_at=per_epoch // 8 + 3)  # mid epoch 1
    assert stopped.summary["status"] == "preempted"
    resumed, rest = run_recording(tmp_path / "b", resume="auto")
    assert resumed.summary["status"] == "completed"
    assert first + rest == everything
    ref = dict(reference.model.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in resumed.model.named_parameters())
