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


def test_plan_before_the_data_exists_plans_the_step_and_asks_for_its_size(llama7b_dir, tmp_path, capsys):
    """A recipe whose data file is not there yet: the step (memory, FLOPs) is planned at
    max_length; hours and dollars wait for --rows or --tokens, which give the same run."""
    import yaml

    from leantrain.cli import main

    recipe = {"model": {"name_or_path": str(llama7b_dir), "task": "causal-lm"},
              "data": {"train": "not-written-yet.jsonl", "max_length": 512},
              "cuts": {"lora": {"r": 8}, "precision": "bf16"}, "train": {"batch_size": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")

    def planned(*flags) -> dict:
        assert main(["plan", str(path), "--gpu", "A100-80GB", "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    unsized = planned()
    assert unsized["peak_memory_bytes"] > 0 and unsized["flops_breakdown"]["total"] > 0
    assert unsized["seq_len"] == {"memory": 512, "flops": 512}
    assert unsized["gpus"][0]["hours"] is None and unsized["train_rows"] is None
    assert any("data file not found" in n and "--tokens" in n for n in unsized["notes"])
    by_rows, by_tokens = planned("--rows", "1000"), planned("--tokens", str(1000 * 512))
    assert by_rows["gpus"][0]["hours"] > 0 and by_rows["gpus"][0]["usd_on_demand"] > 0
    assert by_tokens["train_rows"] == 1000 and by_tokens["gpus"][0]["hours"] == by_rows["gpus"][0]["hours"]
    assert by_rows["peak_memory_bytes"] == unsized["peak_memory_bytes"]
    with pytest.raises(SystemExit) as stopped:  # one size, not two
        main(["plan", str(path), "--rows", "5", "--tokens", "9"])
    assert stopped.value.code == 2
