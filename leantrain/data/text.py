"""Turn text tables into tokenized examples for classification or causal LM.

Tokenization truncates to ``max_length`` but never pads: padding happens per batch, to
the longest row of that batch, so short texts do not pay for long ones.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from leantrain.data.sources import read_rows
from leantrain.errors import DataError


@dataclass
class TextData:
    train: list[dict]
    eval: list[dict]
    collate: Callable
    label_names: list[str] | None = None
    majority_label: int | None = None
    stats: dict = field(default_factory=dict)


class CausalLMCollator:
    """Pad a batch to its longest row; labels are the input ids, padding masked out (-100).

    Padding is found from the attention mask, not by token id: when the pad token is
    EOS (common for causal LMs), real EOS tokens must stay targets.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict]) -> dict:
        # Only ids and mask: decoder-only models take no token_type_ids (BERT-style
        # tokenizers emit them), and generate() rejects them.
        rows = [{k: ex[k] for k in ("input_ids", "attention_mask") if k in ex} for ex in examples]
        batch = self.tokenizer.pad(rows, padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def _texts(rows: list[dict], column: str, source: str) -> list[str]:
    texts = []
    for i, row in enumerate(rows):
        value = row[column]
        if value is None:
            raise DataError(f"{source}: row {i + 1} has no value in text column {column!r}")
        texts.append(str(value))
    return texts


def _label_names(labels: list[str]) -> list[str]:
    """Distinct labels, numerically sorted when they are all integers (so "10" follows "9")."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    if n_eval >= len(rows):
        raise DataError(f"data.eval_fraction={fraction} leaves no training rows out of {len(rows)}")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def load_text_data(data_cfg, task: str, tokenizer, seed: int, resolve: Callable) -> TextData:
    """Read, split, label-map and tokenize the recipe's data section."""
    from transformers import DataCollatorWithPadding

    if not data_cfg.train:
        raise DataError("data.train: no training file given")
    classify = task == "sequence-classification"
    columns = [data_cfg.text_column] + ([data_cfg.label_column] if classify else [])
    train_path = resolve(data_cfg.train)
    train_rows = read_rows(train_path, data_cfg.limit, columns)
    if data_cfg.eval:
        eval_path = resolve(data_cfg.eval)
        eval_rows = read_rows(eval_path, data_cfg.limit, columns)
    else:
        eval_path = train_path
        train_rows, eval_rows = _split(train_rows, data_cfg.eval_fraction, seed)

    def encode(rows: list[dict], source) -> list[dict]:
        if not rows:  # eval_fraction: 0 holds nothing out (tokenizers fail on an empty batch)
            return []
        enc = tokenizer(_texts(rows, data_cfg.text_column, str(source)), truncation=True, max_length=data_cfg.max_length)
        return [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]

    train, evaluation = encode(train_rows, train_path), encode(eval_rows, eval_path)
    stats = {"rows_train": len(train), "rows_eval": len(evaluation)}
    if not classify:
        return TextData(train, evaluation, CausalLMCollator(tokenizer), stats=stats)

    train_labels = [str(r[data_cfg.label_column]) for r in train_rows]
    names = _label_names(train_labels)
    if len(names) < 2:
        raise DataError(f"{train_path}: label column {data_cfg.label_column!r} has only one class ({names[0]!r})")
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(r[data_cfg.label_column]) for r in eval_rows} - set(index))
    if unknown:
        raise DataError(f"{eval_path}: eval label {unknown[0]!r} never appears in the training data")
    for ex, row in zip(train, train_rows):
        ex["labels"] = index[str(row[data_cfg.label_column])]
    for ex, row in zip(evaluation, eval_rows):
        ex["labels"] = index[str(row[data_cfg.label_column])]
    majority = index[Counter(train_labels).most_common(1)[0][0]]
    return TextData(train, evaluation, DataCollatorWithPadding(tokenizer), names, majority, stats)
