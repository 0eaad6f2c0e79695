"""Instruction and chat data for causal LM: each example rendered through a chat template,
the loss only on what the assistant says.

Four row formats share one path: ``prompt``/``completion``, alpaca-style
``instruction``/``input``/``output`` and ``messages`` (role/content lists, OpenAI or
ShareGPT style) all become a conversation, rendered by the tokenizer's own chat template
(or ``data.chat.template``); plain ``text`` stays in text.py.

Why token ids and not strings: the usual completion-only collators find the answer by
searching for a response-template string in the tokenized row, and drop (or, worse, train
on everything in) rows where the boundary tokenizes differently. Here each assistant turn's
span comes from rendering the conversation up to that turn twice, once ending in the
generation prompt (what the model sees before it answers) and once ending in the answer;
both token sequences must be prefixes of the whole conversation's, and the tokens between
them are the turn's answer, its end-of-turn token included. So every assistant turn of a
multi-turn chat is trained, no system/user token is, and the end-of-turn token is a target
even when the tokenizer pads with it (labels are explicit; padding is found by position).
A template that is not prefix-stable is refused, naming the row, rather than guessed around.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from leantrain.data.packing import IGNORE_INDEX
from leantrain.errors import DataError

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


class ChatSettings(BaseModel):
    """``data.chat``: where the conversation is in each row, and how it is rendered."""

    model_config = ConfigDict(extra="forbid")
    messages_column: str = Field("messages", description="`format: messages`: the column holding the list of turns (a JSON string in CSV).")
    role_key: str = Field("role", description="Key of a turn's role (ShareGPT: `from`).")
    content_key: str = Field("content", description="Key of a turn's text (ShareGPT: `value`).")
    role_names: dict[str, Role] = Field(
        {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"},
        description="Other role names and the role each stands for (system, user or assistant).",
    )
    prompt_column: str = Field("prompt", description="`format: prompt-completion`: the prompt column.")
    completion_column: str = Field("completion", description="`format: prompt-completion`: the answer column.")
    instruction_column: str = Field("instruction", description="`format: alpaca`: the instruction column.")
    input_column: str = Field("input", description="`format: alpaca`: the optional input column (appended to the instruction).")
    output_column: str = Field("output", description="`format: alpaca`: the answer column.")
    system_prompt: str | None = Field(None, description="A system turn put first in every conversation that has none.")
    template: str | None = Field(
        None, description="A Jinja chat template (the text, or a file path relative to the recipe) instead of the tokenizer's own."
    )
    train_on_inputs: bool = Field(False, description="Train on system and user tokens too (off: only the assistant's turns are targets).")
    eval_generate: int = Field(0, ge=0, description="At each evaluation, answer the first N eval conversations' last turn by greedy "
                               "decoding: `exact_match` and `contains` join the eval metrics, the answers go to RUN_DIR/samples.jsonl.")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer at evaluation.")


def source_columns(data_cfg) -> list[str]:
    """The columns a chat format reads (the alpaca input column is optional)."""
    chat = data_cfg.chat
    return {
        "prompt-completion": [chat.prompt_column, chat.completion_column],
        "alpaca": [chat.instruction_column, chat.output_column],
        "messages": [chat.messages_column],
    }[data_cfg.format]


def conversation(row: dict, data_cfg, where: str) -> list[dict]:
    """One row as ``[{"role", "content"}, ...]``, checked; ``where`` is "file: row N"."""
    chat = data_cfg.chat
    if data_cfg.format == "prompt-completion":
        turns = [{"role": "user", "content": _text(row, chat.prompt_column, where)},
                 {"role": "assistant", "content": _text(row, chat.completion_column, where)}]
    elif data_cfg.format == "alpaca":
        extra = row.get(chat.input_column)
        prompt = _text(row, chat.instruction_column, where)
        if extra not in (None, "") and str(extra).strip():
            prompt = f"{prompt}\n\n{extra}"
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row, chat.output_column, where)}]
    else:
        turns = _messages(row.get(chat.messages_column), chat, where)
    if chat.system_prompt and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": chat.system_prompt})
    return turns


def _text(row: dict, column: str, where: str) -> str:
    value = row.get(column)
    if value is None or not str(value).strip():
        raise DataError(f"{where}: column {column!r} is empty")
    return str(value)


def _messages(value, chat: ChatSettings, where: str) -> list[dict]:
    key = chat.messages_column
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: column {key!r} is not a JSON list of turns ({exc.msg})") from None
    if not isinstance(value, list):
        raise DataError(f"{where}: column {key!r} must be a list of turns, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: column {key!r} is an empty conversation")
    turns = []
    for j, turn in enumerate(value):
        if not isinstance(turn, dict) or chat.role_key not in turn or chat.content_key not in turn:
            raise DataError(f"{where}: {key}[{j}] needs the keys {chat.role_key!r} and {chat.content_key!r} (data.chat.role_key / content_key)")
        role = str(turn[chat.role_key])
        role = chat.role_names.get(role, role)
        if role not in ROLES:
            raise DataError(f"{where}: {key}[{j}].{chat.role_key} is {turn[chat.role_key]!r}; allowed: "
                            f"{', '.join(ROLES)} (map other names in data.chat.role_names)")
        if not isinstance(turn[chat.content_key], str):
            raise DataError(f"{where}: {key}[{j}].{chat.content_key} must be text")
        turns.append({"role": role, "content": turn[chat.content_key]})
    if not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"{where}: column {key!r} has no assistant turn: nothing to train on")
    return turns


def chat_template(data_cfg, tokenizer, resolve: Callable, model_name: str) -> str:
    """The Jinja template to render with: the recipe's (text or file), else the tokenizer's."""
    given = data_cfg.chat.template
    if given:
        if "{" not in given:  # a path, not template text
            path = Path(resolve(given))
            if not path.is_file():
                raise DataError(f"data.chat.template: no such file {str(path)!r}")
            return path.read_text(encoding="utf-8")
        return given
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data.chat.template: the tokenizer of {model_name!r} has no chat template, which data.format: "
                        f"{data_cfg.format} needs; give one in data.chat.template (Jinja text or a file)")
    return tokenizer.chat_template


def _render(tokenizer, turns: list[dict], template: str, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template)


def encode_conversations(tokenizer, conversations: list[list[dict]], template: str, max_length: int,
                         train_on_inputs: bool, wheres: list[str]) -> tuple[list[dict | None], dict]:
    """Token ids and labels per conversation (``None`` where truncation left no answer
    token), and counts for the summary. One tokenizer call per batch of conversations."""
    texts, spans = [], []
    for turns in conversations:
        first = len(texts)
        texts.append(_render(tokenizer, turns, template, False))
        for i, turn in enumerate(turns):
            if turn["role"] == "assistant":
                texts += [_render(tokenizer, turns[:i], template, True), _render(tokenizer, turns[: i + 1], template, False)]
        spans.append((first, len(texts)))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    examples: list[dict | None] = []
    counts = {"answers_truncated": 0, "dropped_truncated": 0, "target_tokens": 0, "tokens": 0}
    for (first, last), where in zip(spans, wheres):
        full = ids[first]
        labels = list(full) if train_on_inputs else [IGNORE_INDEX] * len(full)
        for k in range(first + 1, last, 2):
            before, through = ids[k], ids[k + 1]
            if full[: len(before)] != before or full[: len(through)] != through or len(through) <= len(before):
                raise DataError(f"{where}: the chat template does not render this conversation as a prefix of itself turn by "
                                f"turn, so the assistant's tokens cannot be found by id; set data.chat.template to one that does")
            labels[len(before) : len(through)] = full[len(before) : len(through)]
        answer = sum(1 for t in labels if t != IGNORE_INDEX)
        kept = labels[:max_length]
        trained = sum(1 for t in kept if t != IGNORE_INDEX)
        if trained == 0:
            counts["dropped_truncated"] += 1
            examples.append(None)
            continue
        counts["answers_truncated"] += trained < answer
        counts["target_tokens"] += trained
        counts["tokens"] += min(len(full), max_length)
        examples.append({"input_ids": full[:max_length], "attention_mask": [1] * min(len(full), max_length), "labels": kept})
    return examples, counts
