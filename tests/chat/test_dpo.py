"""DPO (`data.format: preference`) on a tiny Llama with SmolLM2's tokenizer and template:
loss and gradients against TRL's DPOTrainer and a hand-written reference, a run that
learns a preference, the tokenized-cache key, and bad input as a user meets it."""
from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
import yaml

from leantrain import train
from leantrain.data.preference import PreferenceCollator, encode_pairs, pair
from leantrain.engine.preference import PreferenceTask
from leantrain.recipe import parse_recipe
from testdata import assert_one_line_error, train_in_subprocesses

BETA = 0.5
# Different prompt and response lengths, so padding and the completion mask matter.
TOY = [("Is the sky blue?", "yes", "no, never"), ("Name a colour.", "green is one", "a dog"), ("2+2?", "4", "5 or maybe 22")]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM")


def grads(model) -> dict[str, torch.Tensor]:
    found = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


def assert_same_grads(ours: dict, reference: dict) -> None:
    assert ours and set(ours) == set(reference)
    scale = max(g.abs().max().item() for g in reference.values())
    assert scale > 1e-3  # the toy case has real gradients
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_dpo_loss_and_gradients_equal_trl_and_a_hand_written_reference(tiny_chat_llama_dir, tmp_path):
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_chat_llama_dir))
    frozen = copy.deepcopy(base).eval()  # the reference, held apart here to check disable_adapter against
    policy = get_peft_model(base, lora_config()).train()
    with torch.no_grad():  # a trained adapter: policy and reference differ, so the loss is not log 2
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    data_cfg = parse_recipe({"data": {"format": "preference"}}).data
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in TOY]
    examples, _ = encode_pairs(tokenizer, [pair(row, data_cfg, f"toy: row {i + 1}") for i, row in enumerate(rows)],
                               tokenizer.chat_template, 512)
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples)

    # Hand-written: each sequence alone (no padding), log_softmax + gather, a separate frozen model.
    def logp(model, prompt, response):
        ids = torch.tensor([prompt + response])
        log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        return log_probs.gather(-1, ids[0, 1:, None])[len(prompt) - 1 :, 0].sum()

    hand = []
    for ex in examples:
        with torch.no_grad():
            ref = [logp(frozen, ex["input_ids"], ex[k]) for k in ("chosen_ids", "rejected_ids")]
        pol = [logp(policy, ex["input_ids"], ex[k]) for k in ("chosen_ids", "rejected_ids")]
        hand.append(-F.logsigmoid(BETA * ((pol[0] - ref[0]) - (pol[1] - ref[1]))))
    hand = torch.stack(hand)
    hand.mean().backward()
    hand_grads = grads(policy)
    assert (hand.detach() - math.log(2)).abs().max() > 1e-2

    task = PreferenceTask(BETA)
    for selects_logits in (True, False):  # logits at response positions only, and the plain causal-LM path
        task.selects_logits = selects_logits
        losses = task.example_losses(policy, batch)
        assert losses.shape == (len(TOY),) and task.count(batch) == len(TOY)
        torch.testing.assert_close(losses.detach(), hand.detach(), atol=1e-5, rtol=1e-5)
        (losses.sum() / task.count(batch)).backward()  # what the loop does with one micro-batch
        assert_same_grads(grads(policy), hand_grads)

    # TRL's DPOTrainer on the same model, adapter and data: its tokens, its loss, its gradients.
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    conversational = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                       "rejected": [{"role": "assistant", "content": r}]} for p, c, r in TOY]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", beta=BETA, use_cpu=True, max_length=None)
    trainer = DPOTrainer(model=copy.deepcopy(frozen).train(), args=args, train_dataset=Dataset.from_list(conversational),
                         processing_class=tokenizer, peft_config=lora_config())
    adapter = {n: p.detach() for n, p in policy.named_parameters() if "lora" in n}
    assert not trainer.model.load_state_dict(adapter, strict=False).unexpected_keys
    tokenized = [trainer.train_dataset[i] for i in range(len(TOY))]
    assert [[t[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")] for t in tokenized] == \
        [[e[k] for k in ("input_ids", "chosen_ids", "rejected_ids")] for e in examples]
    trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(tokenized))
    trl_loss.backward()
    assert trl_loss.item() == pytest.approx(hand.mean().item(), abs=1e-5)
    assert_same_grads(grads(trainer.model), hand_grads)


def preference_rows(n: int, seed: int) -> list[dict]:
    """A preference a 2-layer random model learns in a dozen steps: always "yes" over "no"."""
    rng = random.Random(seed)
    things = ["the sky", "grass", "snow", "water", "a cat"]
    return [{"prompt": f"Is {rng.choice(things)} real?", "chosen": "yes", "rejected": "no"} for _ in range(n)]


def test_dpo_run_raises_reward_accuracy_and_margin(tiny_chat_llama_dir, tmp_path):
    recipe = {
        "model": {"name_or_path": str(tiny_chat_llama_dir), "task": "causal-lm", "from_scratch": True},
        "data": {"train": write_jsonl(tmp_path / "train.jsonl", preference_rows(32, 0)),
                 "eval": write_jsonl(tmp_path / "eval.jsonl", preference_rows(8, 1)),
                 "format": "preference", "max_length": 128, "chat": {"system_prompt": "Answer."}},
        "cuts": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "fast_dropout": False},
        "train": {"epochs": 3, "batch_size": 8, "lr": 5e-3, "seed": 0, "log_every": 1, "eval_at_start": True, "eval_every": 4},
        "output": {"dir": str(tmp_path / "run"), "tensorboard": False},
    }
    run = train(recipe, show_progress=False)
    start = run.summary["extras"]["eval_at_start"]
    # The adapter starts at zero: policy and reference agree, every reward is 0, the loss log 2.
    assert start["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["reward_accuracy"] == 0.0 and start["reward_margin"] == 0.0
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    margins = [e["reward_margin"] for e in evals if e["event"] == "eval"]
    assert len(margins) == 3 and margins == sorted(margins) and margins[0] > 0
    final = run.summary["eval"]
    assert final["reward_accuracy"] == 1.0 and final["reward_margin"] > 0.05 and final["loss"] < math.log(2) - 0.03
    assert final["reward_chosen"] > 0 > final["reward_rejected"]
    chat = run.summary["data"]["chat"]
    assert chat["format"] == "preference" and chat["dropped_truncated"] == 0 and run.summary["data"]["rows_train"] == 32
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()


def test_the_cache_key_holds_the_columns_but_not_beta(tiny_chat_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    from leantrain.data.text import load_text_data

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    rows = [{**r, "other": "maybe"} for r in preference_rows(6, 0)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)

    def load(**preference):
        data_cfg = parse_recipe({"data": {"train": path, "format": "preference", "eval_fraction": 0.0,
                                          "cache_dir": str(tmp_path / "cache"), "preference": preference}}).data
        return load_text_data(data_cfg, "causal-lm", tokenizer, 0, lambda p: p)

    first, other_beta, other_column = load(), load(beta=0.5), load(rejected_column="other")
    assert not first.stats["cache_hit"] and other_beta.stats["cache_hit"]
    assert other_beta.stats["cache_key"] == first.stats["cache_key"] != other_column.stats["cache_key"]
    assert not other_column.stats["cache_hit"]
    assert first.train[0]["rejected_ids"] != other_column.train[0]["rejected_ids"]
    assert first.train[0]["chosen_ids"] == other_column.train[0]["chosen_ids"]


def test_raw_text_pairs_through_a_plain_template_and_truncation(tiny_chat_llama_dir):
    """The docs' template for tokenizers without one; rows cut at max_length, a pair whose
    prompt fills it dropped and counted."""
    from pathlib import Path

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "preference.md").read_text(encoding="utf-8")
    template = yaml.safe_load(doc.split("```yaml")[2].split("```")[0])["data"]["chat"]["template"]
    data_cfg = parse_recipe({"data": {"format": "preference", "chat": {"template": template}}}).data
    rows = [{"prompt": "Is it real", "chosen": "yes it is", "rejected": "no"},
            {"prompt": " ".join(["word"] * 20), "chosen": "yes", "rejected": "no"}]
    pairs = [pair(row, data_cfg, f"t: row {i + 1}") for i, row in enumerate(rows)]
    examples, counts = encode_pairs(tokenizer, pairs, template, 512)
    decoded = [tokenizer.decode(examples[0][k]) for k in ("input_ids", "chosen_ids", "rejected_ids")]
    assert decoded == ["Is it real\n", f"yes it is{tokenizer.eos_token}", f"no{tokenizer.eos_token}"]
    prompt = len(examples[0]["input_ids"])
    examples, counts = encode_pairs(tokenizer, pairs, template, prompt + 2)
    assert examples[1] is None and counts["dropped_truncated"] == 1 and counts["answers_truncated"] == 1
    assert [len(examples[0][k]) for k in ("chosen_ids", "rejected_ids")] == [2, 2]


BAD = {
    "missing column": ('{"prompt": "a", "chosen": "b"}\n', {}, ["train.jsonl", "missing column 'rejected'"]),
    "empty chosen": ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": " ", "rejected": "c"}\n', {},
                     ["train.jsonl: row 2", "column 'chosen' is empty"]),
    "same response": ('{"prompt": "a", "chosen": "b", "rejected": "b"}\n', {},
                      ["train.jsonl: row 1", "'chosen' and 'rejected' hold the same text"]),
    "without lora": ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n', {"lora": False},
                     ["recipe.yaml", "cuts.lora", "data.format: preference", "needs cuts.lora"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, tiny_chat_llama_dir):
    recipe = lambda options: {"model": {"name_or_path": str(tiny_chat_llama_dir), "task": "causal-lm", "from_scratch": True},
                              "data": {"train": "train.jsonl", "format": "preference", "eval_fraction": 0.0},
                              "cuts": {"lora": options.get("lora", True)}, "train": {"epochs": 1, "batch_size": 2}}
    return train_in_subprocesses(tmp_path_factory, {case: (text, recipe(options)) for case, (text, options, _) in BAD.items()})


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_preference_input_exits_2_with_one_line_naming_file_row_and_key(bad_runs, case):
    assert_one_line_error(bad_runs[case], BAD[case][2])
