"""The planner's predictions against real short runs on CPU (the issue's acceptance: 10%).

Each configuration is planned from its config alone (fake tensors) and then trained for
two steps; the memory accountant and the ledger's FlopCounterMode measure the real run.
"""
from __future__ import annotations

import pytest

from leantrain.plan.validate import compare, long_text_rows, short_run_recipe
from testdata import write_csv

LORA = {"r": 4, "alpha": 8}
CONFIGS = [  # (model, batch, max_length, cuts): model size, batch, length, LoRA, checkpointing, precision
    ("bert", 8, 32, {}),
    ("bert", 4, 64, {"precision": "bf16"}),
    ("bert", 8, 48, {"lora": LORA, "precision": {"dtype": "bf16", "frozen_dtype": "bf16"}}),
    ("bert", 4, 64, {"gradient_checkpointing": True}),
    ("bert", 16, 32, {"lora": LORA, "gradient_checkpointing": True, "precision": "bf16"}),
    ("llama", 4, 32, {}),
    ("llama", 8, 24, {"lora": LORA, "gradient_checkpointing": True, "precision": {"dtype": "bf16", "frozen_dtype": "bf16"}}),
    ("llama", 2, 64, {"lora": LORA, "precision": "bf16", "grad_accumulation": 2}),
]


@pytest.fixture(scope="module")
def long_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("plan-data") / "long.csv", long_text_rows(60))


@pytest.mark.parametrize("model,batch,max_length,cuts", CONFIGS)
def test_prediction_within_ten_percent_of_measurement(model, batch, max_length, cuts, long_csv, tiny_bert_dir, tiny_llama_dir, tmp_path):
    model_dir, task = (tiny_bert_dir, "sequence-classification") if model == "bert" else (tiny_llama_dir, "causal-lm")
    recipe = short_run_recipe(str(model_dir), task, str(long_csv), str(tmp_path / "run"), batch, max_length, cuts)
    result = compare(recipe)
    assert result["seq_len"] == max_length  # every batch is max_length long: one length to predict
    assert abs(result["bytes_error"]) < 0.10, result
    assert abs(result["flops_error"]) < 0.10, result
    # The saved activations alone (the part a formula gets wrong) are predicted too, not only the weights.
    predicted, measured = result["predicted_breakdown"], result["measured_breakdown"]
    ratio = predicted["saved_activations"] / measured["saved_activations"]
    if "bf16" in str(cuts.get("precision")):
        # bf16 on a CPU runs matmul attention by default; the plan over-predicts its saved
        # activations by one fp32 batch x heads x length^2 tensor per layer (docs/plan.md,
        # "Known gap"): an upper bound, never an under-prediction, of at most that size.
        assert 0.9 < ratio < 1.30, result
    else:
        assert abs(ratio - 1) < 0.10, result
