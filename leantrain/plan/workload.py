"""How much work a recipe asks for: rows, steps and the sequence lengths a step sees.

Why measure the data: batches are padded to their longest row, not to ``max_length``, so
the mean padded length (which sets FLOPs and hours) is often a fraction of it, and the
longest batch (which sets the peak) may be shorter too. When the data and a tokenizer
are at hand, the run's own pipeline (tokenize-once cache included) and its own batch
formation give both exactly; otherwise ``data.max_length`` is assumed for both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from leantrain.errors import UserError


@dataclass
class Workload:
    seq_len_memory: int            # padded length of the longest batch
    seq_len_flops: int             # mean padded length over an epoch's batches
    train_rows: int | None
    num_labels: int
    notes: list[str] = field(default_factory=list)

    def total_steps(self, train, micro_batch: int, accumulation: int) -> int | None:
        """Optimizer steps of the whole run, computed as the run computes them."""
        if self.train_rows is None:
            return train.max_steps
        batches = math.ceil(self.train_rows / micro_batch)
        steps = math.ceil(train.epochs * math.ceil(batches / accumulation))
        return min(steps, train.max_steps) if train.max_steps else steps


def padded_lengths(lengths: list[int], train, accumulation: int) -> tuple[int, int]:
    """(longest, mean) padded length of epoch 0's micro-batches, as the run forms them."""
    from leantrain.data.batching import epoch_order

    batches = epoch_order(len(lengths), train.batch_size, train.seed, 0, lengths, train.bucket_by_length,
                          micro_batches=accumulation)
    padded = [max(lengths[i] for i in b) for b in batches if b]
    sizes = [len(b) for b in batches if b]
    mean = sum(p * n for p, n in zip(padded, sizes)) / sum(sizes)
    return max(padded), max(1, round(mean))


def measure_workload(recipe, accumulation: int = 1, rows: int | None = None) -> Workload:
    """The recipe's workload from its data when readable, else from ``data.max_length``."""
    max_length = recipe.data.max_length
    fallback = Workload(max_length, max_length, rows, 2)
    if not recipe.data.train:
        fallback.notes.append("no data.train: sequence length = data.max_length"
                              + ("" if rows is not None else "; pass --rows to get hours and dollars"))
        return fallback
    try:
        from leantrain.models import load_tokenizer

        tokenizer = load_tokenizer(recipe.model)
    except UserError as exc:
        fallback.train_rows = rows if rows is not None else _count_rows(recipe)
        fallback.notes.append(f"no tokenizer ({exc}): sequence length = data.max_length")
        return fallback
    from leantrain.data.text import load_text_data

    data = load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path)
    lengths = [len(ex["input_ids"]) for ex in data.train]
    longest, mean = padded_lengths(lengths, recipe.train, accumulation)
    labels = len(data.label_names) if data.label_names else 2
    work = Workload(longest, mean, rows if rows is not None else len(data.train), labels)
    work.notes.append(f"sequence lengths measured on the training data: longest batch {longest}, mean padded {mean} "
                      f"(data.max_length {max_length})")
    return work


def _count_rows(recipe) -> int:
    """Training rows without tokenizing: the file's rows minus the held-out eval share."""
    from leantrain.data.sources import open_source
    from leantrain.data.text import _resolve

    source = open_source(_resolve(recipe.data.train, recipe.resolve_path))
    count = len(source.rows(recipe.data.limit, [recipe.data.text_column]))
    if recipe.data.eval is None and recipe.data.eval_fraction > 0:
        count -= max(1, round(count * recipe.data.eval_fraction))  # as the run's split holds out
    return count
