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


def measure_workload(recipe, accumulation: int = 1, rows: int | None = None, tokens: int | None = None) -> Workload:
    """The recipe's workload from its data when readable, else from ``data.max_length``.

    ``rows`` or ``tokens`` (training tokens; rows = tokens / mean padded length) stand in
    for the data's size, e.g. before the data exists: a step's memory and FLOPs need only
    the model and ``max_length``; the whole run's hours and dollars need the size too.
    """
    work = _measure(recipe, accumulation, rows, sized=rows is not None or tokens is not None)
    if tokens is not None:
        work.train_rows = math.ceil(tokens / work.seq_len_flops)
        work.notes.append(f"training rows from --tokens {tokens:,}: {work.train_rows:,} rows of {work.seq_len_flops} tokens")
    return work


def _measure(recipe, accumulation: int, rows: int | None, sized: bool) -> Workload:
    max_length = recipe.data.max_length
    fallback = Workload(max_length, max_length, rows, 2)
    size_hint = "" if sized else "; hours and dollars for the whole run need its size: pass --rows N or --tokens N"
    if not recipe.data.train:
        fallback.notes.append("no data.train: sequence length = data.max_length" + size_hint)
        return fallback
    missing = _missing_data(recipe)
    if missing:
        fallback.notes.append(f"{missing}: the step is planned at data.max_length ({max_length} tokens per row)" + size_hint)
        return fallback
    try:
        from leantrain.models import load_tokenizer

        tokenizer = load_tokenizer(recipe.model)
    except UserError as exc:
        fallback.train_rows = rows if rows is not None else _count_rows(recipe)
        fallback.notes.append(f"no tokenizer ({exc}): sequence length = data.max_length")
        if recipe.data.pack and rows is None:
            fallback.notes.append("data.pack without a tokenizer: the rows counted are documents, and packed rows of "
                                  "data.max_length are fewer (so are steps); pass --tokens N for the packed run")
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


def _missing_data(recipe) -> str | None:
    """"data file not found: ..." when a data file does not exist (yet), else None; a file
    that exists but is unreadable still fails, later, with its own error."""
    from leantrain.data.sources import open_source
    from leantrain.data.text import _resolve
    from leantrain.errors import MissingDataError

    for spec in (recipe.data.train, recipe.data.eval):
        try:
            if spec:
                open_source(_resolve(spec, recipe.resolve_path))
        except MissingDataError as exc:
            return str(exc)
    return None


def _count_rows(recipe) -> int:
    """Training rows without tokenizing: the file's rows minus the held-out eval share."""
    from leantrain.data.sources import open_source
    from leantrain.data.text import _resolve, row_columns

    source = open_source(_resolve(recipe.data.train, recipe.resolve_path))
    count = len(source.rows(recipe.data.limit, row_columns(recipe.data)))
    if recipe.data.eval is None and recipe.data.eval_fraction > 0:
        count -= max(1, round(count * recipe.data.eval_fraction))  # as the run's split holds out
    return count
