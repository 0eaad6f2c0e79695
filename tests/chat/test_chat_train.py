"""Chat data through the whole engine on a tiny Llama with SmolLM2's tokenizer: training,
packing (same per-document losses as unpacked), and bad input as a user meets it."""
from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from leantrain import train
from leantrain.data.chat import encode_conversations
from leantrain.data.packing import IGNORE_INDEX, PackedCollator, PackedExamples
from leantrain.data.text import CausalLMCollator
from testdata import assert_one_line_error, train_in_subprocesses

# One answer: a 2-layer, 32-wide random model learns to give it and stop within a few dozen
# steps (it does not learn a mapping of several in that time).
COLOURS = {"sky": "blue"}


def chats(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = []
        for thing in [rng.choice(sorted(COLOURS)) for _ in range(rng.randint(1, 2))]:
            turns += [{"role": "user", "content": f"What colour is {thing}?"}, {"role": "assistant", "content": COLOURS[thing]}]
        rows.append({"messages": turns})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def chat_recipe(model_dir, folder, **data) -> dict:
    return {
        "model": {"name_or_path": str(model_dir), "task": "causal-lm", "from_scratch": True},
        "data": {"train": write_jsonl(folder / "train.jsonl", chats(48, 0)), "eval": write_jsonl(folder / "eval.jsonl", chats(12, 1)),
                 "format": "messages", "max_length": 128, **data},
        "cuts": {"fast_dropout": False},
        "train": {"epochs": 12, "batch_size": 8, "lr": 1e-2, "seed": 0, "log_every": 1},
        "output": {"dir": str(folder / "run")},
    }


def test_chat_recipe_trains_on_answers_and_reports_the_masking(tiny_chat_llama_dir, tmp_path):
    recipe = chat_recipe(tiny_chat_llama_dir, tmp_path)
    recipe["data"]["chat"] = {"eval_generate": 6, "max_new_tokens": 4}
    recipe["train"]["eval_every"] = 24
    run = train(recipe, show_progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["event"] == "eval"]
    losses = [e["loss"] for e in evals]
    assert losses[-1] < losses[0]
    # The generated answers are scored at every evaluation and written out.
    assert evals[-1]["exact_match"] == 1.0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * len(evals) and {s["evaluation"] for s in samples} == set(range(1, len(evals) + 1))
    last = [s for s in samples if s["evaluation"] == len(evals)]
    assert all(s["reference"] in COLOURS.values() and s["prompt"].rstrip().endswith("assistant") for s in last)
    assert sum(s["exact_match"] for s in last) / 6 == evals[-1]["exact_match"]
    chat = run.summary["data"]["chat"]
    assert chat["format"] == "messages" and chat["dropped_truncated"] == 0
    assert 0 < chat["target_fraction"] < 0.5  # answers are a small part of each rendered chat
    # predict renders a user turn with the run's template and returns the assistant's reply
    from leantrain.predict import predict

    replies = list(predict(tmp_path / "run", [f"What colour is {thing}?" for thing in COLOURS], max_new_tokens=4))
    assert all(set(r) == {"text", "reply"} for r in replies)
    assert all(r["reply"] == COLOURS[thing] for r, thing in zip(replies, COLOURS)), replies


@torch.no_grad()
def test_packed_chat_rows_give_each_conversation_its_unpacked_loss(tiny_chat_llama_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_chat_llama_dir)).eval()
    conversations = [r["messages"] for r in chats(5, 2)]
    examples, _ = encode_conversations(tokenizer, conversations, tokenizer.chat_template, 512, False, ["t"] * 5)
    unpacked = []
    for ex in examples:
        batch = CausalLMCollator(tokenizer)([ex])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        unpacked.append(F.cross_entropy(logits[0], batch["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="sum").item())
    packed = PackedExamples(examples, [len(e["input_ids"]) for e in examples], capacity=10_000)
    assert len(packed) == 1  # all five conversations in one row
    row = packed[0]
    batch = PackedCollator(tokenizer.pad_token_id)([row])
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0, :-1]
    per_token = F.cross_entropy(logits, batch["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    order = packed.rows[0]
    start = 0
    for doc, size in zip(order, row["doc_lengths"]):
        assert per_token[start : start + size - 1].sum().item() == pytest.approx(unpacked[doc], rel=1e-4, abs=1e-4)
        start += size
    # the same targets, none across a boundary (each chat starts with a masked prompt token)
    assert int((batch["labels"][0, 1:] != IGNORE_INDEX).sum()) == sum(
        sum(t != IGNORE_INDEX for t in e["labels"][1:]) for e in examples)


BAD = {
    "unknown role": ('{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}\n',
                     {}, ["train.jsonl: row 1", "messages[1].role is 'robot'", "allowed: system, user, assistant"]),
    "missing column": ('{"text": "hello"}\n', {}, ["train.jsonl", "missing column 'messages'"]),
    "empty conversation": ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{"messages": []}\n',
                           {}, ["train.jsonl: row 2", "'messages' is an empty conversation"]),
    "template-less tokenizer": ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
                                {"template_less": True}, ["data.chat.template", "has no chat template"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, tiny_chat_llama_dir, tiny_llama_dir):
    recipe = lambda options: {
        "model": {"name_or_path": str(tiny_llama_dir if options.get("template_less") else tiny_chat_llama_dir),
                  "task": "causal-lm", "from_scratch": True},
        "data": {"train": "train.jsonl", "format": "messages", "eval_fraction": 0.0}, "train": {"epochs": 1, "batch_size": 2}}
    return train_in_subprocesses(tmp_path_factory, {case: (text, recipe(options)) for case, (text, options, _) in BAD.items()})


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_chat_data_exits_2_with_one_line_naming_file_row_and_key(bad_runs, case):
    assert_one_line_error(bad_runs[case], BAD[case][2])


def test_the_generated_turn_is_the_last_answer_of_the_conversation():
    from leantrain.engine.chat_eval import last_answer, normalise

    example = {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "labels": [-100, 2, 3, -100, -100, 6, 7, -100]}
    assert last_answer(example) == ([1, 2, 3, 4, 5], [6, 7])
    assert normalise("  Blue. ") == normalise("blue") == "blue"
