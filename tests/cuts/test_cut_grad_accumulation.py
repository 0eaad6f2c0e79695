"""Gradient accumulation: k micro-batches of b give exactly the update of one batch of k*b."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cuts_helpers import initial_state, shared_conftest
from leantrain import train
from leantrain.data.batching import epoch_loader, epoch_order


@pytest.mark.parametrize("n,b,k", [(30, 4, 3), (26, 4, 2), (42, 4, 3), (9, 2, 4)])
def test_epoch_order_does_not_depend_on_batch_size(n, b, k):
    """The comparison below relies on this: batches of b, grouped by k, cover the batches of k*b."""
    for epoch in (0, 1):
        small = [batch.tolist() for batch in epoch_loader(list(range(n)), b, None, 0, epoch)]
        big = [batch.tolist() for batch in epoch_loader(list(range(n)), k * b, None, 0, epoch)]
        grouped = [sum(small[i : i + k], []) for i in range(0, len(small), k)]
        assert grouped == big
        assert sorted(sum(big, [])) == list(range(n))  # a real permutation...
    assert small != [list(range(i, min(i + b, n))) for i in range(0, n, b)]  # ...and a shuffled one


class StepRecorder:
    """Per optimizer step: the example ids of each micro-batch and the gradients used."""

    def __init__(self):
        self.steps: list[dict] = []
        self.pending: list[list[int]] = []

    def __enter__(self):
        # A global hook: it sees the optimizer the engine builds inside train().
        self._pre = register_optimizer_step_pre_hook(self._before_step)
        return self

    def __exit__(self, *exc):
        self._pre.remove()

    def micro_batch(self, ids: list[int]) -> None:
        self.pending.append(ids)

    def _before_step(self, optimizer, args, kwargs):
        grads = {id(p): p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]}
        self.steps.append({"micro_batches": self.pending, "grads": grads})
        self.pending = []

    def named_grads(self, step: int, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        grads = self.steps[step]["grads"]
        return {n: grads[id(p)] for n, p in model.named_parameters() if id(p) in grads}


def assert_same_grads(got: dict, expected: dict, what: str) -> None:
    # atol 1e-6: k summed micro-batch gradients and one batch's round differently in fp32,
    # and three Adam steps later an element of ~1e-3 can differ by ~3e-7. A wrong
    # normalisation (per row or per micro-batch) is off by percents, far beyond it.
    assert got.keys() == expected.keys() and got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{what} {name}: {m}")


def _plain_run(tmp_path, name: str, batch_size: int, steps: int | None, data, recorder: StepRecorder):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def loss_fn(m, batch):
        if m.training:
            recorder.micro_batch(batch["id"].tolist())
        return torch.nn.functional.cross_entropy(m(batch["x"]), batch["y"])

    recipe = {
        "train": {"epochs": 2, "batch_size": batch_size, "lr": 1e-2, "seed": 0, "max_grad_norm": None},
        "output": {"dir": str(tmp_path / name), "save_model": False},
    }
    if steps:
        recipe["cuts"] = {"grad_accumulation": steps}
    with recorder:
        return train(recipe, model=model, loss_fn=loss_fn, train_data=data, show_progress=False)


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pb = dict(b.named_parameters())
    return max((p - pb[n]).abs().max().item() for n, p in a.named_parameters())


def test_accumulated_update_equals_big_batch_including_partial_last_group(tmp_path):
    # 30 examples, b=4, k=3: 8 micro-batches per epoch, grouped 3+3+2 with the last
    # micro-batch holding only 2 rows, against big batches of 12, 12 and 6.
    n, b, k = 30, 4, 3
    gen = torch.Generator().manual_seed(7)
    xs, ys = torch.randn(n, 10, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    data = [{"x": xs[i], "y": ys[i], "id": torch.tensor(i)} for i in range(n)]
    torch.manual_seed(0)  # the same initial weights as every _plain_run
    init = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    acc, big = StepRecorder(), StepRecorder()
    accumulated = _plain_run(tmp_path, "acc", b, k, data, acc)
    one_batch = _plain_run(tmp_path, "big", k * b, None, data, big)

    # Same number of optimizer steps, and step i sees exactly the examples of big batch i.
    assert accumulated.summary["steps"] == one_batch.summary["steps"] == len(acc.steps) == len(big.steps) == 6
    for step_acc, step_big in zip(acc.steps, big.steps):
        assert len(step_big["micro_batches"]) == 1
        assert sum(step_acc["micro_batches"], []) == step_big["micro_batches"][0]
        assert all(len(mb) <= b for mb in step_acc["micro_batches"])  # memory of b, not k*b
    # The last group of each epoch is partial: 2 micro-batches, the second one short.
    for last in (acc.steps[2], acc.steps[5]):
        assert [len(mb) for mb in last["micro_batches"]] == [4, 2]

    # Each step's gradient is the big batch's gradient...
    for i in range(len(big.steps)):
        assert_same_grads(acc.named_grads(i, accumulated.model), big.named_grads(i, one_batch.model), f"step {i}")
    # ...so the weights end up the same.
    assert max_weight_diff(accumulated.model, one_batch.model) <= 1e-5
    # The comparison is not vacuous: training moved the weights far more than the tolerance,
    assert max_weight_diff(accumulated.model, init) > 1e-2
    # and plain small batches (no accumulation) end up clearly elsewhere.
    small = _plain_run(tmp_path, "small", b, None, data, StepRecorder())
    assert max_weight_diff(small.model, one_batch.model) > 1e-3


def test_causal_lm_accumulation_normalises_by_tokens(tmp_path, tiny_llama_dir):
    shared = shared_conftest()
    csv = shared.write_csv(tmp_path / "topics.csv", shared.make_topic_rows(56))
    recipe = {
        "model": {"name_or_path": str(tiny_llama_dir), "from_scratch": True, "task": "causal-lm"},
        # 56 rows - 14 held out = 42 training rows: 11 micro-batches of 4 (the last has 2),
        # so groups of 3 end with a partial group of 2 micro-batches (6 rows).
        "data": {"train": str(csv), "eval_fraction": 0.25, "max_length": 16},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "seed": 0, "max_grad_norm": None},
        "output": {"dir": str(tmp_path / "acc"), "save_model": False},
        "cuts": {"grad_accumulation": 3},
    }
    big_recipe = copy.deepcopy(recipe)
    big_recipe["cuts"] = {}
    big_recipe["train"]["batch_size"] = 12
    big_recipe["output"]["dir"] = str(tmp_path / "big")

    _, untrained, data, _ = initial_state(recipe)
    assert len(data.train) == 42
    # Rows differ in length, so how the loss is normalised (tokens vs rows) matters.
    assert len({len(ex["input_ids"]) for ex in data.train}) > 3

    acc, big = StepRecorder(), StepRecorder()
    with acc:
        accumulated = train(recipe, show_progress=False)
    with big:
        one_batch = train(big_recipe, show_progress=False)
    assert accumulated.summary["steps"] == one_batch.summary["steps"] == len(acc.steps) == 4
    assert accumulated.summary["samples_seen"] == one_batch.summary["samples_seen"] == 42
    for i in range(4):
        assert_same_grads(acc.named_grads(i, accumulated.model), big.named_grads(i, one_batch.model), f"step {i}")
    assert max_weight_diff(accumulated.model, one_batch.model) <= 1e-5
    # Training moved the weights well beyond the tolerance (lr 1e-3, 4 Adam steps).
    assert max_weight_diff(accumulated.model, untrained) > 1e-3

    # Independent reference for the first step: transformers' own causal-LM loss, the mean
    # over all target tokens of the first step's 12 rows. A per-row or per-micro-batch
    # average would give a different gradient.
    # The engine buckets by length (train.bucket_by_length defaults to true): step 0 holds
    # the examples of the first step of that order.
    lengths = [len(ex["input_ids"]) for ex in data.train]
    first_step = epoch_order(len(data.train), 12, 0, 0, lengths, bucket=True)[0]
    first_rows = data.collate([data.train[i] for i in first_step])
    untrained.train()
    untrained(**first_rows).loss.backward()
    reference = {n: p.grad for n, p in untrained.named_parameters()}
    assert_same_grads(acc.named_grads(0, accumulated.model), reference, "step 0 vs transformers loss")
