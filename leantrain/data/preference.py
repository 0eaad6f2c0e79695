"""Preference data for DPO: each row a prompt with a chosen and a rejected response.

A pair is rendered as two conversations sharing their first turns (the prompt as a user
turn, after ``data.chat.system_prompt`` if set; each response as the assistant's turn)
through the same chat-template path as the chat formats (chat.py), so a response's tokens
are found by id, its end-of-turn token included, and a template that is not prefix-stable
is refused with the row named rather than guessed around. What is stored is TRL's
tokenized layout: the prompt's ids once and each response's ids, which TRL's
``DataCollatorForPreference`` turns into one batch of 2B rows (chosen, then rejected)
with a completion mask; the task (engine/preference.py) scores only completion tokens.

Raw text without a chat template goes through ``data.chat.template`` like every chat
format: a plain template (see docs/preference.md) concatenates prompt and response, so
there is one rendering path and one set of checks, not a second, unchecked one.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from leantrain.data.chat import _text, encode_conversations
from leantrain.data.packing import IGNORE_INDEX
from leantrain.errors import DataError

PREFERENCE = "preference"  # the data.format value


class PreferenceSettings(BaseModel):
    """``data.preference``: the columns of a pair and the DPO loss's settings."""

    model_config = ConfigDict(extra="forbid")
    prompt_column: str = Field("prompt", description="`format: preference`: the prompt column (a user turn).")
    chosen_column: str = Field("chosen", description="`format: preference`: the preferred response column.")
    rejected_column: str = Field("rejected", description="`format: preference`: the dispreferred response column.")
    beta: float = Field(0.1, gt=0, description="DPO's beta: how far the policy may move from the reference (smaller: further). "
                        "The reference is the model with its LoRA adapter disabled.")
    loss_type: Literal["sigmoid"] = Field("sigmoid", description="DPO loss: `sigmoid`, the original one (TRL's default).")


def columns(data_cfg) -> list[str]:
    cfg = data_cfg.preference
    return [cfg.prompt_column, cfg.chosen_column, cfg.rejected_column]


def cache_key(data_cfg) -> dict:
    """What of ``data.preference`` shapes tokens: the columns, not beta or the loss."""
    return data_cfg.preference.model_dump(include={"prompt_column", "chosen_column", "rejected_column"})


def pair(row: dict, data_cfg, where: str) -> dict:
    """One row as its two conversations, checked; ``where`` is "file: row N"."""
    cfg, system = data_cfg.preference, data_cfg.chat.system_prompt
    prompt, chosen, rejected = (_text(row, column, where) for column in columns(data_cfg))
    if chosen == rejected:
        raise DataError(f"{where}: columns {cfg.chosen_column!r} and {cfg.rejected_column!r} hold the same text: "
                        "the pair prefers nothing")
    head = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"turns": head + [{"role": "assistant", "content": chosen}],
            "rejected": head + [{"role": "assistant", "content": rejected}], "where": where}


def _prompt_and_answer(example: dict) -> tuple[list[int], list[int]]:
    labels = example["labels"]
    targets = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
    ids = list(example["input_ids"])
    return ids[: targets[0]], ids[targets[0] : targets[-1] + 1]


def encode_pairs(tokenizer, pairs: list[dict], template: str, max_length: int) -> tuple[list[dict | None], dict]:
    """Prompt and response ids per pair (``None`` where truncation leaves either response
    no token), and the chat summary's counts. Both conversations are rendered untruncated
    (so a cut answer is counted), then each is cut at ``max_length`` as the model sees it."""
    n, wheres = len(pairs), [p["where"] for p in pairs]
    encoded, _ = encode_conversations(tokenizer, [p["turns"] for p in pairs] + [p["rejected"] for p in pairs], template,
                                      sys.maxsize, False, wheres + wheres)
    counts = {"answers_truncated": 0, "dropped_truncated": 0, "target_tokens": 0, "tokens": 0}
    examples: list[dict | None] = []
    for chosen, rejected, where in zip(encoded[:n], encoded[n:], wheres):
        prompt, chosen_ids = _prompt_and_answer(chosen)
        other, rejected_ids = _prompt_and_answer(rejected)
        if prompt != other:  # a template that renders the prompt depending on the answer
            raise DataError(f"{where}: the chat template renders the prompt differently before the chosen and the rejected "
                            "response; set data.chat.template to one that does not")
        room = max_length - len(prompt)
        if room <= 0:
            counts["dropped_truncated"] += 1
            examples.append(None)
            continue
        counts["answers_truncated"] += len(chosen_ids) > room or len(rejected_ids) > room
        chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
        counts["target_tokens"] += len(chosen_ids) + len(rejected_ids)
        counts["tokens"] += 2 * len(prompt) + len(chosen_ids) + len(rejected_ids)
        # The prompt is stored as ``input_ids``: the cache and the length helpers key on that name.
        examples.append({"input_ids": prompt, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    return examples, counts


class PairExamples(Sequence):
    """Stored pairs with the lengths batching should see: a pair's longer row (prompt and
    its longer response), not the prompt alone that ``input_ids`` holds."""

    def __init__(self, examples: Sequence):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def lengths(self) -> list[int]:
        return [len(ex["input_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"])) for ex in self.examples]


class PreferenceCollator:
    """TRL's ``DataCollatorForPreference``: rows ``[chosen..., rejected...]`` (prompt +
    response, right-padded), ``attention_mask`` and ``completion_mask`` (response tokens)."""

    def __init__(self, pad_token_id: int):
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        self.collate = DataCollatorForPreference(pad_token_id=pad_token_id)

    def __call__(self, examples: list[dict]) -> dict:
        return self.collate([{"prompt_ids": list(ex["input_ids"]), "chosen_ids": list(ex["chosen_ids"]),
                              "rejected_ids": list(ex["rejected_ids"])} for ex in examples])
