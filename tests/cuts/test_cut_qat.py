"""QAT: training sees the rounding of int8 weights and activations; the saved model is plain."""
from __future__ import annotations

import copy

import torch

from cuts_helpers import initial_state, make_cut, run_context
from leantrain import train


def test_forward_is_fake_quantized_and_gradients_pass(cut_recipe):
    _, model, data, _ = initial_state(cut_recipe)
    batch = data.collate([data.train[i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    plain = copy.deepcopy(model).eval()
    prepared = make_cut("qat").prepare_model(model, run_context()).eval()
    fake, real = prepared(**inputs).logits, plain(**inputs).logits
    assert not torch.equal(fake, real) and torch.allclose(fake, real, atol=0.1)
    fake.sum().backward()
    assert prepared.classifier.weight.grad is not None and prepared.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0


def test_saved_model_loads_as_a_plain_transformers_model(cut_recipe):
    from transformers import AutoModelForSequenceClassification

    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"qat": {"weight_bits": 4, "group_size": 16}}
    result = train(recipe, show_progress=False)
    assert result.summary["extras"]["qat_layers"] > 0
    reloaded = AutoModelForSequenceClassification.from_pretrained(result.run_dir / "model")
    assert all(type(m) is torch.nn.Linear for m in reloaded.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(reloaded.classifier.weight, result.model.classifier.weight)
