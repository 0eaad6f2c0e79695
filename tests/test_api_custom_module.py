"""`leantrain.train(...)` with a plain torch.nn.Module, and the cuts acting on it."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import leantrain
from leantrain.errors import UserError


class Block(nn.Module):
    calls = 0  # forward calls that build a graph for backward (training forwards and recomputes)

    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        if torch.is_grad_enabled():
            Block.calls += 1
        return x + torch.tanh(self.fc(x))


class MLP(nn.Module):
    def __init__(self, n_in: int = 8, width: int = 32, depth: int = 3):
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.head(h.flatten(1))


def regression_data(n: int = 240, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g) / 8**0.5
    y = x @ w + 0.05 * torch.randn(n, 1, generator=g)
    rows = [(x[i], y[i]) for i in range(n)]
    return rows[:200], rows[200:]


def mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def eval_loss(model, rows) -> float:
    x = torch.stack([r[0] for r in rows])
    y = torch.stack([r[1] for r in rows])
    with torch.no_grad():
        return F.mse_loss(model.eval()(x), y).item()


def recipe(tmp_path, cuts=None, **train) -> dict:
    return {
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "seed": 0, "log_every": 1, **train},
        "cuts": cuts or {},
        "output": {"dir": str(tmp_path / "run")},
    }


def new_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def train_losses(run_dir) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if e["event"] == "train"]


def test_mlp_regression_trains_is_summarised_and_reloads(tmp_path):
    train_rows, eval_rows = regression_data()
    model = new_mlp()
    before = eval_loss(copy.deepcopy(model), eval_rows)

    result = leantrain.train(recipe(tmp_path), model=model, loss_fn=mse, train_data=train_rows,
                             eval_data=eval_rows, show_progress=False)

    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == 4 * 13  # ceil(200 / 16) steps per epoch
    assert summary["eval"]["loss"] == pytest.approx(eval_loss(result.model, eval_rows), rel=1e-4)
    assert summary["eval"]["loss"] < 0.5 * before
    losses = train_losses(result.run_dir)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert summary["trainable_params"] == summary["total_params"] == sum(p.numel() for p in model.parameters())

    from safetensors.torch import load_file

    reloaded = MLP()
    reloaded.load_state_dict(load_file(result.run_dir / "model" / "model.safetensors"))
    x = torch.stack([r[0] for r in eval_rows])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), result.model.eval()(x))

    meta = json.loads((result.run_dir / "model" / "leantrain.json").read_text())
    assert meta["task"] == "custom" and meta["module"] == "MLP"
    with pytest.raises(UserError, match="custom torch.nn.Module"):
        from leantrain.predict import load_run_model

        load_run_model(result.run_dir)


def make_images(n: int, seed: int):
    """8x8 images with one bright 2x2 patch: label 1 when it is in the right half."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        img = 0.1 * torch.randn(1, 8, 8, generator=g)
        label = i % 2
        r = int(torch.randint(0, 7, (1,), generator=g))
        c = int(torch.randint(0, 3, (1,), generator=g)) + 5 * label
        img[0, r : r + 2, c : c + 2] += 1.0
        rows.append({"image": img, "label": torch.tensor(label)})
    return rows


def test_small_cnn_learns_a_classification_task_with_dict_batches(tmp_path):
    torch.manual_seed(0)
    model = CNN()

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch["image"]), batch["label"])

    def accuracy(model, batch):
        return {"accuracy": (model(batch["image"]).argmax(-1) == batch["label"]).float().mean()}

    result = leantrain.train(
        recipe(tmp_path, epochs=3, lr=1e-2), model=model, loss_fn=loss_fn, metric_fn=accuracy,
        train_data=make_images(160, 1), eval_data=make_images(64, 2), show_progress=False,
    )
    ev = result.summary["eval"]
    assert result.summary["status"] == "completed"
    assert set(ev) == {"loss", "accuracy"}
    assert ev["accuracy"] >= 0.9
    assert ev["loss"] < F.cross_entropy(torch.zeros(1, 2), torch.tensor([0])).item()  # beats a uniform guess
    assert (result.run_dir / "model" / "model.safetensors").is_file()


def test_lora_on_named_linear_layers_trains_only_the_adapters(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    train_rows, eval_rows = regression_data()
    model = new_mlp()
    original = copy.deepcopy(model)
    before = eval_loss(copy.deepcopy(model), eval_rows)

    result = leantrain.train(
        recipe(tmp_path, cuts={"lora": {"target_modules": ["inp", "fc"], "r": 4, "dropout": 0.0}}, epochs=6),
        model=model, loss_fn=mse, train_data=train_rows, eval_data=eval_rows, show_progress=False,
    )
    trained = result.model
    trainable = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # one A and one B per adapted layer: inp + 3 blocks
    assert len(trainable) == 2 * 4
    assert result.summary["trainable_params"] == sum(p.numel() for p in trainable.values())
    assert result.summary["trainable_params"] < result.summary["total_params"]
    assert result.summary["cuts"] == ["lora", "fast_dropout"]

    # the frozen weights did not move; the adapters did, and they helped
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in trained.named_parameters() if not p.requires_grad}
    for name, value in original.state_dict().items():
        torch.testing.assert_close(frozen[name], value)
    assert all(p.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)
    assert result.summary["eval"]["loss"] < 0.8 * before

    # the saved adapter, put on a copy of the original module, reproduces the trained model
    adapter = load_file(result.run_dir / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(original), result.run_dir / "model")
    x = torch.stack([r[0] for r in eval_rows])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), trained.eval()(x))


def test_lora_on_a_plain_module_without_target_modules_says_what_to_name(tmp_path):
    train_rows, _ = regression_data()
    with pytest.raises(UserError, match=r"target_modules.*fc, inp, out"):
        leantrain.train(recipe(tmp_path, cuts={"lora": True}), model=new_mlp(), loss_fn=mse,
                        train_data=train_rows, show_progress=False)


def test_gradient_checkpointing_recomputes_the_blocks_and_changes_no_result(tmp_path):
    train_rows, eval_rows = regression_data()
    results, calls = {}, {}
    for cuts in ({}, {"gradient_checkpointing": True}):
        name = "checkpointed" if cuts else "plain"
        Block.calls = 0
        results[name] = leantrain.train(
            recipe(tmp_path / name, cuts=cuts, epochs=2), model=new_mlp(), loss_fn=mse,
            train_data=train_rows, eval_data=eval_rows, show_progress=False,
        )
        calls[name] = Block.calls
    assert results["checkpointed"].summary["extras"]["checkpointed_blocks"] == 3
    # every block's forward runs twice per training step: once forward, once in backward
    assert calls["plain"] == 3 * results["plain"].summary["steps"]
    assert calls["checkpointed"] == 2 * calls["plain"]
    for (n1, p1), (n2, p2) in zip(results["plain"].model.named_parameters(),
                                  results["checkpointed"].model.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2)


def test_bf16_precision_runs_matmuls_in_bf16_with_fp32_weights(tmp_path):
    train_rows, eval_rows = regression_data()
    model = new_mlp()
    before = eval_loss(copy.deepcopy(model), eval_rows)
    dtypes = set()
    hook = model.inp.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)

    result = leantrain.train(recipe(tmp_path, cuts={"precision": "bf16"}), model=model, loss_fn=mse,
                             train_data=train_rows, eval_data=eval_rows, show_progress=False)
    hook.remove()
    assert dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.summary["cuts"] == ["precision", "fast_dropout"]
    assert result.summary["eval"]["loss"] < 0.5 * before


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    train_rows, eval_rows = regression_data()  # 200 rows: the last step is a short one
    big = leantrain.train(recipe(tmp_path / "big", batch_size=32, epochs=2), model=new_mlp(), loss_fn=mse,
                          train_data=train_rows, eval_data=eval_rows, show_progress=False)
    accumulated = leantrain.train(
        recipe(tmp_path / "acc", cuts={"grad_accumulation": 4}, batch_size=8, epochs=2), model=new_mlp(),
        loss_fn=mse, train_data=train_rows, eval_data=eval_rows, show_progress=False,
    )
    assert accumulated.summary["steps"] == big.summary["steps"] == 2 * 7
    assert accumulated.summary["samples_seen"] == big.summary["samples_seen"] == 400
    for p_big, p_acc in zip(big.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(p_acc, p_big, rtol=1e-4, atol=1e-5)
    assert train_losses(accumulated.run_dir) == pytest.approx(train_losses(big.run_dir), rel=1e-4)
