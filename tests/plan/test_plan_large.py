"""A Llama-2-7B-sized model planned on paper: standard model-state accounting and fit flags."""
from __future__ import annotations

import json

import pytest

from leantrain.plan.planner import plan
from leantrain.recipe import parse_recipe

H, I, L, V = 4096, 11008, 32, 32000  # Llama-2-7B


@pytest.fixture(scope="module")
def llama7b_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama7b")
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": L, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": V,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float16", "tie_word_embeddings": False,
    }))
    return path


def _plan(model_dir, cuts: dict) -> dict:
    recipe = parse_recipe({"model": {"name_or_path": str(model_dir), "task": "causal-lm"}, "data": {"max_length": 512},
                           "cuts": cuts, "train": {"batch_size": 1}})
    return plan(recipe, gpus=["A10G"], rows=1000, recommend=False)


def _state(p: dict) -> int:
    m = p["memory_breakdown"]
    return m["weights"] + m["gradients"] + m["optimizer_states"]


def test_full_fp32_fine_tuning_needs_16_bytes_per_parameter_and_does_not_fit_24gb(llama7b_dir):
    params = 2 * V * H + L * (4 * H * H + 3 * H * I + 2 * H) + H  # embeddings, head, blocks, final norm
    p = _plan(llama7b_dir, {"precision": "fp32"})
    assert p["params"]["total"] == params
    assert abs(_state(p) / params / 16 - 1) < 0.05
    assert p["gpus"][0]["name"] == "A10G" and p["gpus"][0]["fits"] is False and p["gpus"][0]["max_batch_size"] == 0


def test_lora_checkpointing_bf16_fits_24gb_at_batch_1_sequence_512(llama7b_dir):
    p = _plan(llama7b_dir, {"lora": {"r": 8}, "gradient_checkpointing": True,
                            "precision": {"dtype": "bf16", "frozen_dtype": "bf16"}})
    lora_params = L * 2 * (8 * H + H * 8)  # q_proj and v_proj adapters, fp32 and trainable
    assert p["params"]["trainable"] == lora_params
    frozen = p["params"]["total"] - lora_params
    expected = 2 * frozen + 16 * lora_params
    assert abs(_state(p) / expected - 1) < 0.05
    assert p["gpus"][0]["fits"] is True and p["gpus"][0]["max_batch_size"] >= 1
    # Checkpointing keeps block inputs only: far below the un-checkpointed activations.
    plain = _plan(llama7b_dir, {"lora": {"r": 8}, "precision": {"dtype": "bf16", "frozen_dtype": "bf16"}})
    assert p["memory_breakdown"]["saved_activations"] * 5 < plain["memory_breakdown"]["saved_activations"]
    assert p["flops_breakdown"]["recompute"] > 0 and plain["flops_breakdown"]["recompute"] == 0
