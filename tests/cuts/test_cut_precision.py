"""Mixed precision: bf16 matmuls with fp32 master weights; fp16 needs CUDA and a grad scaler."""
from __future__ import annotations

import copy
import json
import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import leantrain.cuts.precision as precision_module
from cuts_helpers import make_cut, run_context
from leantrain import UserError, train
from leantrain.cuts import CutStack
from leantrain.errors import DeviceError

MATMULS = {"mm", "addmm", "linear", "matmul"}  # what nn.Linear dispatches to, forward and backward


class MatmulDtypes(TorchDispatchMode):
    """Counts (op, output dtype) of every matrix multiply that actually executes."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in MATMULS and torch.is_tensor(out):
            self.seen[(name, out.dtype)] += 1
        return out


def train_losses(run_dir) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] in ("train", "eval", "final_eval")]


def test_bf16_runs_linear_layers_in_bf16_and_keeps_fp32_master_weights(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"precision": "bf16"}
    recipe["train"].update(max_steps=3, log_every=1, eval_every=2)
    recorder = MatmulDtypes()
    with recorder:
        result = train(recipe, show_progress=False)

    assert recorder.seen, "no matrix multiply was recorded"
    dtypes = {dtype for (_, dtype) in recorder.seen}
    assert dtypes == {torch.bfloat16}, recorder.seen
    # Master weights (all trainable here) stay fp32.
    assert {p.dtype for p in result.model.parameters() if p.requires_grad} == {torch.float32}
    losses = train_losses(result.run_dir)
    assert len(losses) >= 4 and all(math.isfinite(v) for v in losses)
    assert result.summary["status"] == "completed"


def test_bf16_autocast_on_linear_outputs_only_inside_the_forward_context():
    cut = make_cut("precision", dtype="bf16")
    run = run_context()
    cut.setup(run)
    layer = cut.prepare_model(torch.nn.Linear(4, 4), run)
    outputs = []
    layer.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
    with cut.forward_context(run):
        layer(torch.randn(2, 4))
    layer(torch.randn(2, 4))
    assert outputs == [torch.bfloat16, torch.float32]
    assert layer.weight.dtype == torch.float32


def test_trainable_low_precision_weights_are_made_fp32():
    cut = make_cut("precision", dtype="bf16")
    run = run_context()
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    model.bias.requires_grad_(False)
    cut.setup(run)
    cut.prepare_model(model, run)
    assert model.weight.dtype == torch.float32  # trainable: master copy in fp32
    assert model.bias.dtype == torch.bfloat16  # frozen and no frozen_dtype: left as loaded


def test_frozen_dtype_bf16_with_lora(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"lora": True, "precision": {"dtype": "bf16", "frozen_dtype": "bf16"}}
    recipe["train"].update(max_steps=4, log_every=1, eval_every=2)
    result = train(recipe, show_progress=False)

    params = dict(result.model.named_parameters())
    frozen = {n: p for n, p in params.items() if not p.requires_grad}
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    assert frozen and trainable
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}, "frozen base weights must be bf16"
    assert {p.dtype for p in trainable.values()} == {torch.float32}, "LoRA and head weights must stay fp32"
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    # Saved bytes reported: 2 bytes per frozen weight.
    assert result.summary["extras"]["frozen_weight_bytes_saved"] == 2 * sum(p.numel() for p in frozen.values())
    # Training worked: finite losses and the zero-initialised LoRA B matrices moved.
    assert all(math.isfinite(v) for v in train_losses(result.run_dir))
    assert all(p.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)


@pytest.mark.parametrize("setting", [{"dtype": "fp16"}, {"dtype": "bf16", "frozen_dtype": "fp16"}], ids=["dtype", "frozen_dtype"])
def test_fp16_on_cpu_is_a_device_error_naming_the_key(cut_recipe, setting):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"precision": setting}
    recipe["train"]["device"] = "cpu"
    with pytest.raises(DeviceError) as info:
        train(recipe, show_progress=False)
    assert "cuts.precision" in str(info.value) and "\n" not in str(info.value)
    assert "fp16" in str(info.value)


def test_low_precision_frozen_weights_without_autocast_is_a_user_error(cut_recipe):
    # bf16 frozen weights meeting fp32 activations would fail deep inside a matmul.
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"lora": True, "precision": {"dtype": "fp32", "frozen_dtype": "bf16"}}
    with pytest.raises(UserError) as info:
        train(recipe, show_progress=False)
    assert "cuts.precision" in str(info.value) and "\n" not in str(info.value)


# -- fp16 with a gradient scaler. The scaler logic is device independent; CPU autocast and
# torch.amp.GradScaler("cpu") support fp16, so it is exercised here with the CUDA-only
# device guard bypassed. The real device path is covered by the CUDA test below. --


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "check_device_supports", lambda dtype, device, key="": None)
    cut = make_cut("precision", dtype="fp16")
    run = run_context()
    cut.setup(run)
    return cut, run


def _inputs():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(5, 3, generator=gen), torch.randn(5, 2, generator=gen)


def test_fp16_scaler_scales_unscales_and_steps(fp16_on_cpu):
    cut, run = fp16_on_cpu
    assert isinstance(cut.scaler, torch.amp.GradScaler)
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    reference = copy.deepcopy(layer)
    x, y = _inputs()

    # Reference: plain fp32 gradients and one SGD step.
    torch.nn.functional.mse_loss(reference(x), y).backward()
    ref_grads = [p.grad.clone() for p in reference.parameters()]
    torch.optim.SGD(reference.parameters(), lr=0.1).step()

    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = torch.nn.functional.mse_loss(layer(x), y)
    scaled = cut.scale_loss(loss, run)
    scale = cut.scaler.get_scale()
    assert scale > 1
    torch.testing.assert_close(scaled, loss * scale)
    scaled.backward()
    torch.testing.assert_close(layer.weight.grad, ref_grads[0] * scale)

    stack = CutStack([cut])
    stack.on_before_optimizer_step(optimizer, run)  # unscale, so clipping sees true values
    for got, want in zip((p.grad for p in layer.parameters()), ref_grads):
        torch.testing.assert_close(got, want)
    stack.optimizer_step(optimizer, run)  # the cut owns the step: exactly one step is taken
    for got, want in zip(layer.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)


def test_fp16_scaler_skips_overflowing_steps_and_backs_off(fp16_on_cpu):
    cut, run = fp16_on_cpu
    layer = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, y = _inputs()
    cut.scale_loss(torch.nn.functional.mse_loss(layer(x), y), run).backward()
    layer.weight.grad[0, 0] = float("inf")
    scale = cut.scaler.get_scale()
    cut.on_before_optimizer_step(optimizer, run)
    assert cut.optimizer_step(optimizer, run) is True
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before)), "an overflowing step must be skipped"
    assert cut.scaler.get_scale() < scale

    # The scale is part of the cut's state and survives a checkpoint round trip.
    state = cut.state_dict()
    other = make_cut("precision", dtype="fp16")
    other.setup(run)
    other.load_state_dict(state)
    assert other.scaler.get_scale() == cut.scaler.get_scale()


def test_bf16_needs_no_scaler():
    cut = make_cut("precision", dtype="bf16")
    run = run_context()
    cut.setup(run)
    loss = torch.tensor(2.0)
    assert cut.scale_loss(loss, run) is loss
    assert cut.optimizer_step(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), run) is False
    assert cut.state_dict() == {}


def test_fp16_training_loop_with_scaler_on_cpu(fp16_on_cpu, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(6)
    xs, ys = torch.randn(40, 10, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    data = [(xs[i], ys[i]) for i in range(40)]
    seen_dtypes = set()

    def loss_fn(m, batch):
        logits = m(batch[0])
        seen_dtypes.add(logits.dtype)
        return torch.nn.functional.cross_entropy(logits.float(), batch[1])

    result = train(
        {"cuts": {"precision": "fp16"}, "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "log_every": 1},
         "output": {"dir": str(tmp_path / "run"), "save_model": False}},
        model=model, loss_fn=loss_fn, train_data=data, eval_data=data[:8], show_progress=False,
    )
    assert seen_dtypes == {torch.float16}
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert all(math.isfinite(v) for v in train_losses(result.run_dir))
    assert all(not torch.equal(p, b) for p, b in zip(result.model.parameters(), before))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training with a GradScaler needs a CUDA device")
def test_fp16_on_cuda_trains(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"precision": "fp16"}
    recipe["train"].update(device="cuda", max_steps=4, log_every=1)
    result = train(recipe, show_progress=False)
    assert all(math.isfinite(v) for v in train_losses(result.run_dir))
    assert {p.dtype for p in result.model.parameters() if p.requires_grad} == {torch.float32}


def _tiny_bert_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, attn_implementation="sdpa")
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("dtype, switch, expect_switch", [("bf16", True, True), ("fp32", True, False), ("bf16", False, False)])
def test_bf16_on_cpu_swaps_fused_attention_for_matmul_attention_with_the_same_outputs(dtype, switch, expect_switch):
    model = _tiny_bert_classifier()
    inputs = {"input_ids": torch.randint(0, 64, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    with torch.no_grad():
        fused = model(**inputs).logits
    cut, run = make_cut("precision", dtype=dtype, cpu_matmul_attention=switch), run_context()
    cut.setup(run)
    cut.prepare_model(model, run)
    assert (model.config._attn_implementation == "eager") is expect_switch
    assert ("attention" in run.extras) is expect_switch
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, fused, atol=1e-5)


def test_bf16_falls_back_to_fp32_where_the_cpu_measures_it_slower(cut_recipe, monkeypatch, capsys):
    monkeypatch.setattr(precision_module, "cpu_bf16_slowdown", lambda *a, **k: 7.0)
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"precision": "bf16"}
    recipe["train"].update(max_steps=2, log_every=1)
    recorder = MatmulDtypes()
    with recorder:
        result = train(recipe, show_progress=False)
    assert {dtype for (_, dtype) in recorder.seen} == {torch.float32}, recorder.seen
    assert "7.0x slower" in result.summary["extras"]["precision"]
    assert "training in fp32" in capsys.readouterr().out


def test_cpu_fallback_false_keeps_bf16_without_measuring(cut_recipe, monkeypatch):
    def must_not_measure(*a, **k):
        raise AssertionError("measured although cpu_fallback is off")

    monkeypatch.setattr(precision_module, "cpu_bf16_slowdown", must_not_measure)
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"precision": {"dtype": "bf16", "cpu_fallback": False}}
    recipe["train"].update(max_steps=2, log_every=1)
    recorder = MatmulDtypes()
    with recorder:
        train(recipe, show_progress=False)
    assert {dtype for (_, dtype) in recorder.seen} == {torch.bfloat16}, recorder.seen


def test_the_bf16_probe_measures_a_finite_ratio():
    # The real probe (the autouse fixture stands in for it elsewhere): a positive, finite ratio.
    ratio = precision_module.cpu_bf16_slowdown.measure(size=64, repeats=1)
    assert 0 < ratio < float("inf")
