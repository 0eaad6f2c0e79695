"""Fast dropout: the same Bernoulli masks as torch's CPU dropout, drawn word-wise."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import leantrain.cuts.fast_dropout as fast
from cuts_helpers import make_cut, run_context
from leantrain import train


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_masks_drop_at_rate_p_and_keep_the_expectation(dtype, p):
    torch.manual_seed(0)
    n = 1_000_000
    out = fast.fast_dropout(torch.ones(n, dtype=dtype), p).float()
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n), dropped     # 5 sigma
    kept_values = out[out != 0].unique()
    assert kept_values.numel() == 1
    expected_scale = torch.tensor(1 / (1 - p), dtype=dtype).float()       # as the native kernel rounds it
    assert kept_values.item() == pytest.approx(expected_scale.item(), rel=1e-4)
    if dtype == torch.float32:
        assert out.mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(p / (1 - p) / n))


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(4096, requires_grad=True)
    y = fast.fast_dropout(x, 0.3)
    y.sum().backward()
    kept = y != 0
    scale = (y[kept] / x[kept]).mean()
    assert torch.allclose(x.grad, kept.float() * scale)
    assert scale.item() == pytest.approx(1 / 0.7, rel=1e-4)


def test_masks_follow_the_global_seed_and_differ_between_calls():
    torch.manual_seed(5)
    first, second = fast.fast_dropout(torch.ones(1000), 0.5), fast.fast_dropout(torch.ones(1000), 0.5)
    torch.manual_seed(5)
    assert torch.equal(fast.fast_dropout(torch.ones(1000), 0.5), first)
    assert not torch.equal(first, second)


def test_edge_probabilities_and_eval_mode():
    x = torch.randn(64)
    assert torch.equal(fast.fast_dropout(x, 0.0), x)
    assert torch.count_nonzero(fast.fast_dropout(x, 1.0)) == 0
    module = fast.FastDropout(0.5).eval()
    assert module(x) is x


def _count_fast_calls(monkeypatch) -> list[int]:
    calls = []
    real = fast.fast_dropout

    def counting(x, p):
        calls.append(x.numel())
        return real(x, p)

    monkeypatch.setattr(fast, "fast_dropout", counting)
    return calls


def test_cut_swaps_every_dropout_of_a_lora_bert_and_its_attention_dropout(tiny_base_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_base_dir), num_labels=3)
    model.set_attn_implementation("eager")
    model = make_cut("lora").prepare_model(model, run_context())
    plain_dropouts = sum(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    reference = copy.deepcopy(model).eval()
    run = run_context()
    model = make_cut("fast_dropout").prepare_model(model, run)

    assert sum(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules()) == 0
    assert run.extras["fast_dropout"] == {"modules": plain_dropouts, "attention": True}
    assert model.config._attn_implementation == fast.ATTENTION_NAME
    batch = {"input_ids": torch.randint(1, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    # Evaluation: no dropout at all, so the outputs are exactly the unswapped model's.
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    # Training: every module dropout and each layer's attention-probability dropout take the fast path.
    calls = _count_fast_calls(monkeypatch)
    model.train()
    model(**batch)
    layers = model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    assert calls.count(2 * heads * 7 * 7) == layers            # attention probabilities, one per layer
    # Each layer's attention-dropout module is only read for its p (the functional call above
    # replaces it), so the call count equals the number of dropout modules.
    assert len(calls) == plain_dropouts


def test_cut_leaves_a_gpu_run_alone():
    run = run_context()
    run.device = torch.device("meta")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    make_cut("fast_dropout").prepare_model(model, run)
    assert type(model[1]) is torch.nn.Dropout
    assert "skipped" in run.extras["fast_dropout"]


def test_training_with_the_cut_learns(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"lora": {"r": 4}, "precision": {"dtype": "bf16", "cpu_matmul_attention": True}, "fast_dropout": True}
    recipe["train"].update(epochs=3, log_every=1)
    result = train(recipe, show_progress=False)
    assert result.summary["extras"]["fast_dropout"]["attention"] is True
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses


def test_checkpoint_recomputation_redraws_the_same_masks():
    """torch.utils.checkpoint restores the global generator before recomputing; the fast
    masks come from that generator, so gradients match the run without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    linear, dropout = torch.nn.Linear(32, 32), fast.FastDropout(0.3)
    x = torch.randn(8, 32)
    grads = []
    for recompute in (False, True):
        linear.zero_grad()
        torch.manual_seed(1)
        block = lambda t: dropout(linear(t)).relu()  # noqa: E731
        (checkpoint(block, x, use_reentrant=False) if recompute else block(x)).sum().backward()
        grads.append(linear.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
