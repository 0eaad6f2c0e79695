"""A chat LoRA run's outputs are standard artefacts (issue 17): the adapter and the merged
model load with plain transformers + PEFT and give the logits leantrain trained and
predicts with, on a chat-templated prompt, and the saved tokenizer carries the template.

Why a chat test of its own: the classification one (tests/test_model_folder.py) saves the
base beside the adapter; a causal LM's adapter is saved alone and names its base, and a
chat run also depends on the tokenizer it saves, so the paths differ.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from leantrain import train
from testdata import copy_tokenizer

QUESTION = "What colour is the sky?"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _chats(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    things = {"sky": "blue", "grass": "green", "snow": "white"}
    rows = []
    for _ in range(n):
        thing = rng.choice(sorted(things))
        rows.append({"messages": [{"role": "user", "content": f"What colour is the {thing}?"},
                                  {"role": "assistant", "content": things[thing]}]})
    return rows


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tiny_chat_llama_dir):
    """A published-style base (weights on disk, not from scratch), a short chat LoRA run on
    it with a merged export: what a user fine-tuning an instruct model gets."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("chat-outputs")
    base = root / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_chat_llama_dir)).save_pretrained(base)
    copy_tokenizer(tiny_chat_llama_dir, base)
    recipe = {
        "model": {"name_or_path": str(base), "task": "causal-lm"},
        "data": {"train": _jsonl(root / "train.jsonl", _chats(32, 0)), "eval": _jsonl(root / "eval.jsonl", _chats(6, 1)),
                 "format": "messages", "max_length": 64},
        "cuts": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS, "merge_on_save": True}},
        "train": {"epochs": 3, "max_steps": 12, "batch_size": 8, "lr": 1e-2, "seed": 0, "log_every": 4},
        "output": {"dir": str(root / "run"), "tensorboard": False},
    }
    result = train(recipe, show_progress=False)
    result.model.eval()
    return result, base


def _prompt(tokenizer) -> dict:
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model.eval()(**batch).logits.float()


@pytest.fixture(scope="module")
def expected(chat_run):
    """The logits of the model leantrain returns, on the prompt its saved tokenizer renders."""
    from transformers import AutoTokenizer

    result, _ = chat_run
    batch = _prompt(AutoTokenizer.from_pretrained(result.run_dir / "model"))
    return batch, _logits(result.model, batch)


def test_run_directory_holds_adapter_merged_model_and_templated_tokenizers(chat_run):
    from transformers import AutoTokenizer

    result, base = chat_run
    model_dir = result.run_dir / "model"
    assert result.summary["status"] == "completed" and result.summary["steps"] == 12
    assert result.summary["saved"] == {"model": str(model_dir), "merged_model": str(model_dir / "merged")}
    assert (model_dir / "adapter_model.safetensors").is_file()
    # A causal LM's adapter is saved alone: the base is where the user has it.
    assert not (model_dir / "model.safetensors").exists() and not (model_dir / "config.json").exists()
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base) and sorted(adapter["target_modules"]) == sorted(TARGETS)
    meta = json.loads((model_dir / "leantrain.json").read_text())
    assert meta["task"] == "causal-lm" and meta["adapter"] is True and meta["format"] == "messages"
    template = AutoTokenizer.from_pretrained(base).chat_template
    assert template and "<|im_start|>" in template
    for folder in (model_dir, model_dir / "merged"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.chat_template == template, folder
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                                 add_generation_prompt=True)
        assert rendered.endswith("<|im_start|>assistant\n"), rendered


def test_the_adapter_changed_the_base(chat_run, expected):
    """Otherwise every comparison below would pass with an adapter that was never loaded
    (LoRA's B starts at zero, so an untrained adapter is the base)."""
    from transformers import AutoModelForCausalLM

    _, base = chat_run
    batch, logits = expected
    assert (_logits(AutoModelForCausalLM.from_pretrained(base), batch) - logits).abs().max() > 1e-3


def test_plain_peft_loads_the_adapter_on_the_base_with_the_same_logits(chat_run, expected):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, base = chat_run
    batch, logits = expected
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), result.run_dir / "model")
    torch.testing.assert_close(_logits(model, batch), logits, atol=1e-5, rtol=0)


def test_plain_transformers_loads_the_adapter_folder_by_its_recorded_base(chat_run, expected):
    """transformers' own PEFT integration: the adapter folder alone, base found through
    adapter_config.json's base_model_name_or_path."""
    from transformers import AutoModelForCausalLM

    result, _ = chat_run
    batch, logits = expected
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    torch.testing.assert_close(_logits(model, batch), logits, atol=1e-5, rtol=0)


def test_merged_model_is_a_plain_model_with_the_same_logits(chat_run, expected):
    from transformers import AutoModelForCausalLM

    result, _ = chat_run
    batch, logits = expected
    merged = AutoModelForCausalLM.from_pretrained(result.run_dir / "model" / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), logits, atol=1e-5, rtol=0)


def test_predict_uses_the_same_model_and_template(chat_run, expected):
    """`leantrain predict` loads what a user would and answers what the merged model
    generates from the same templated prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leantrain.predict import load_run_model, predict

    result, _ = chat_run
    batch, logits = expected
    model, tokenizer, meta = load_run_model(result.run_dir)
    assert meta["format"] == "messages"
    torch.testing.assert_close(_logits(model, _prompt(tokenizer)), logits, atol=1e-5, rtol=0)
    merged_dir = result.run_dir / "model" / "merged"
    merged, merged_tokenizer = AutoModelForCausalLM.from_pretrained(merged_dir).eval(), AutoTokenizer.from_pretrained(merged_dir)
    with torch.no_grad():
        out = merged.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=merged_tokenizer.pad_token_id)
    reply = merged_tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert [r["reply"] for r in predict(result.run_dir, [QUESTION], max_new_tokens=4)] == [reply]
