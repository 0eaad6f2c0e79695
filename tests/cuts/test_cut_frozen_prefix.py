"""Frozen prefix: the lowest blocks computed once per example, the rest trained as before."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from leantrain import train
from leantrain.cuts.frozen_prefix import install
from leantrain.errors import UserError


def _bert(tiny_bert_dir):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_bert_dir, num_labels=3)
    return AutoModelForSequenceClassification.from_config(config).eval()


def _batch(tokenizer_dir, texts):
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(tokenizer_dir)(texts, padding=True, return_tensors="pt"))


TEXTS = ["a short one", "a rather longer sentence about the weather today", "cats and dogs"]


def _calls(module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_cached_rows_give_the_full_models_logits_in_any_batch(tiny_bert_dir):
    model = _bert(tiny_bert_dir)
    batch = _batch(tiny_bert_dir, TEXTS)
    with torch.no_grad():
        reference = model(**batch).logits
    runner, _ = install(model, 1)
    prefix_calls = _calls(runner.blocks[0])
    with torch.no_grad():
        first = model(**batch).logits                       # misses: the prefix runs once
        # The same examples in another order and with other padding: all hits.
        reordered = _batch(tiny_bert_dir, [TEXTS[2], TEXTS[0]])
        second = model(**reordered).logits
    assert len(prefix_calls) == 1
    assert (runner.cache.misses, runner.cache.hits, len(runner.cache.rows)) == (3, 2, 3)
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, reference[[2, 0]], atol=1e-5, rtol=1e-5)
    # The full block list is back after every call (saving and other code see the whole model).
    assert len(runner.blocks) == 2 and len(model.bert.encoder.layer) == 2


def test_only_the_top_trains_and_its_gradients_are_the_full_models(tiny_bert_dir):
    model = _bert(tiny_bert_dir)
    reference = copy.deepcopy(model)
    runner, thawed = install(model, 1)
    assert thawed  # a plain model was trainable everywhere: the cut reports what it froze
    for module in (reference.bert.embeddings, reference.bert.encoder.layer[0]):
        module.requires_grad_(False)
    assert not any(p.requires_grad for m in runner.prefix_modules() for p in m.parameters())
    batch = _batch(tiny_bert_dir, TEXTS)
    labels = torch.tensor([0, 1, 2])
    for net in (reference, model):
        for _ in range(2):  # the second pass reads the cache
            net.zero_grad()
            net(**batch, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for name, param in reference.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4)


def test_a_decoder_with_a_final_norm_keeps_its_logits(tiny_llama_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama_dir)).eval()
    batch = _batch(tiny_llama_dir, TEXTS)
    with torch.no_grad():
        reference = model(**batch).logits
        prompt = {k: batch[k] for k in ("input_ids", "attention_mask")}
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
        runner, _ = install(model, 1)
        model(**batch)
        cached = model(**batch).logits
        # Generation decodes with a KV cache, which must hold the prefix blocks too: it bypasses the cache.
        assert torch.equal(model.generate(**prompt, max_new_tokens=4, do_sample=False), generated)
    assert runner.cache.hits == 3
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(cached[mask], reference[mask], atol=1e-5, rtol=1e-5)


def test_the_prefix_must_leave_a_block_to_train(tiny_bert_dir):
    with pytest.raises(UserError, match=r"cuts.frozen_prefix.blocks: 2 leaves no block to train.*1\.\.1"):
        install(_bert(tiny_bert_dir), 2)


def test_a_run_computes_each_example_once_and_still_learns(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"lora": {"layers": [1]}, "frozen_prefix": 1}
    recipe["train"].update(epochs=3, eval_every=5)
    train(recipe, show_progress=False)
    run_dir = Path(recipe["output"]["dir"])
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    note = next(e for e in events if e.get("cut") == "frozen_prefix" and "hits" in e)
    examples = 120  # 90 train + 30 eval rows, all distinct
    assert note["misses"] == examples and note["rows"] == examples
    assert note["hits"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["eval"]["accuracy"] > 0.5  # chance is 1/3


def test_rows_cached_under_inference_mode_train_and_bf16_rows_widen_back(tiny_bert_dir):
    model = _bert(tiny_bert_dir)
    runner, _ = install(model, 1, store_dtype="bf16")
    batch = _batch(tiny_bert_dir, TEXTS)
    with torch.inference_mode():
        model(**batch)                                       # an evaluation fills the cache
    assert {row.dtype for row in runner.cache.rows.values()} == {torch.bfloat16}
    seen = []
    runner.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    model.train()
    model(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()   # all hits, with autograd
    assert runner.cache.hits == 3 and seen == [torch.float32]
    assert model.classifier.weight.grad is not None


def test_an_example_twice_in_one_batch_is_stored_and_counted_once(tiny_bert_dir):
    model = _bert(tiny_bert_dir)
    runner, _ = install(model, 1)
    with torch.no_grad():
        model(**_batch(tiny_bert_dir, [TEXTS[0], TEXTS[0], TEXTS[1]]))
    rows = runner.cache.rows
    assert len(rows) == 2
    assert runner.cache.bytes == sum(r.numel() * r.element_size() for r in rows.values())
