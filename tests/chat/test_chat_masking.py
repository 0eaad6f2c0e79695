"""Chat data rendered with the bundled SmolLM2 tokenizer's own template: which tokens are
targets. The reference is computed independently, from character offsets in the rendered
text: a token is a target exactly when it lies inside an assistant turn's content or the
end-of-turn marker (and newline) that closes it."""
from __future__ import annotations

import json

import pytest

from leantrain.data.chat import ChatSettings, encode_conversations
from leantrain.data.packing import IGNORE_INDEX
from leantrain.data.text import CausalLMCollator

END = "<|im_end|>"


@pytest.fixture(scope="module")
def chat_tokenizer(smollm2_dir):
    from leantrain.models import load_tokenizer
    from leantrain.recipe import ModelSection

    return load_tokenizer(ModelSection(name_or_path=str(smollm2_dir), task="causal-lm"))


def reference_targets(tokenizer, turns) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is an answer token
    (found by searching the rendered text for each assistant content, then its END)."""
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for turn in turns:
        start = text.index(turn["content"], cursor)
        cursor = start + len(turn["content"])
        if turn["role"] == "assistant":
            end = text.index(END, cursor) + len(END)
            end += text[end : end + 1] == "\n"
            spans.append((start, end))
    trained = [any(s <= a and b <= e for s, e in spans) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], trained


def encode(tokenizer, turns, max_length=512, train_on_inputs=False):
    template = tokenizer.chat_template
    examples, counts = encode_conversations(tokenizer, [turns], template, max_length, train_on_inputs, ["test: row 1"])
    return examples[0], counts


SINGLE = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]
MULTI = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Colour of the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And of grass?"},
    {"role": "assistant", "content": "Green, mostly."},
]


@pytest.mark.parametrize("turns", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_only_the_assistant_turns_and_their_end_of_turn_are_targets(chat_tokenizer, turns):
    example, counts = encode(chat_tokenizer, turns)
    ids, trained = reference_targets(chat_tokenizer, turns)
    assert example["input_ids"] == ids
    assert [label != IGNORE_INDEX for label in example["labels"]] == trained
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example["labels"], ids))
    end_id = chat_tokenizer.convert_tokens_to_ids(END)
    closing = [i for i, t in enumerate(ids) if t == end_id]
    answers = sum(t["role"] == "assistant" for t in turns)
    trained_ends = [i for i in closing if example["labels"][i] == end_id]
    assert len(trained_ends) == answers  # every assistant turn's end-of-turn is learned ...
    assert len(closing) == len(turns) + (turns[0]["role"] != "system")  # ... no other turn's is (template adds a system turn)
    assert counts["target_tokens"] == sum(trained) and counts["dropped_truncated"] == 0


def test_end_of_turn_stays_a_target_when_the_tokenizer_pads_with_it(chat_tokenizer):
    """The classic pad == eos bug: padding masked by token id would also mask every EOS."""
    tokenizer = chat_tokenizer
    tokenizer.pad_token = END
    short, _ = encode(tokenizer, SINGLE)
    long, _ = encode(tokenizer, MULTI)
    batch = CausalLMCollator(tokenizer)([short, long])
    end_id = tokenizer.convert_tokens_to_ids(END)
    row = batch["labels"][0]
    width = len(short["input_ids"])
    assert (row[width:] == IGNORE_INDEX).all() and (batch["input_ids"][0, width:] == end_id).all()
    assert (row[:width] == end_id).sum() == 1  # the answer's own end-of-turn is kept
    assert batch["labels"][1].tolist() == long["labels"]


def test_train_on_inputs_makes_every_token_a_target(chat_tokenizer):
    example, _ = encode(chat_tokenizer, MULTI, train_on_inputs=True)
    assert example["labels"] == example["input_ids"]


def test_truncation_drops_answerless_examples_and_counts_cut_answers(chat_tokenizer):
    ids, trained = reference_targets(chat_tokenizer, SINGLE)
    first_answer = trained.index(True)
    examples, counts = encode_conversations(
        chat_tokenizer, [SINGLE, SINGLE], chat_tokenizer.chat_template, first_answer, False, ["a: row 1", "a: row 2"])
    assert examples == [None, None] and counts["dropped_truncated"] == 2
    example, counts = encode(chat_tokenizer, SINGLE, max_length=first_answer + 1)
    assert example["labels"][-1] == ids[first_answer] and counts["answers_truncated"] == 1


def rows_to_turns(fmt: str, row: dict, **chat) -> list[dict]:
    from leantrain.data.chat import conversation
    from leantrain.recipe import DataSection

    return conversation(row, DataSection(format=fmt, chat=ChatSettings(**chat)), "f.jsonl: row 1")


def test_the_formats_become_the_same_conversation():
    expected = [{"role": "user", "content": "Add 2 and 2.\n\nanswer briefly"}, {"role": "assistant", "content": "4"}]
    assert rows_to_turns("alpaca", {"instruction": "Add 2 and 2.", "input": "answer briefly", "output": "4"}) == expected
    assert rows_to_turns("alpaca", {"instruction": "Add 2 and 2.", "input": "", "output": "4"})[0]["content"] == "Add 2 and 2."
    assert rows_to_turns("prompt-completion", {"prompt": "Add 2 and 2.\n\nanswer briefly", "completion": "4"}) == expected
    sharegpt = {"conversations": json.dumps([{"from": "human", "value": expected[0]["content"]}, {"from": "gpt", "value": "4"}])}
    assert rows_to_turns("messages", sharegpt, messages_column="conversations", role_key="from", content_key="value") == expected
    with_system = rows_to_turns("prompt-completion", {"prompt": "hi", "completion": "yo"}, system_prompt="Be terse.")
    assert with_system[0] == {"role": "system", "content": "Be terse."}


@pytest.mark.parametrize("row, fragment", [
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role is 'wizard'; allowed: system, user, assistant"),
    ({"messages": []}, "'messages' is an empty conversation"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"messages": [{"role": "user"}]}, "messages[0] needs the keys 'role' and 'content'"),
    ({"messages": "[not json"}, "is not a JSON list"),
])
def test_bad_conversations_name_the_row_and_the_key(row, fragment):
    from leantrain.errors import DataError

    with pytest.raises(DataError) as caught:
        rows_to_turns("messages", row)
    assert str(caught.value).startswith("f.jsonl: row 1: ") and fragment in str(caught.value)
