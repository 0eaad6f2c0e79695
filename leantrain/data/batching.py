"""Batches for one epoch, as a pure function of (seed, epoch): resumable without replay.

The order of an epoch is computed up front as lists of example indices. A resumed run
rebuilds the same lists and starts at batch ``start``: the batches before it are never
loaded or collated again. With ``bucket``, examples of similar length share a batch so
that per-batch padding stays small, while the batch order is still shuffled.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, default_collate

# Examples are sorted by length within windows of this many batches (then the batches
# are shuffled): large enough to group lengths well, small enough to stay random.
BUCKET_WINDOW_BATCHES = 64


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_order(
    n: int, batch_size: int, seed: int, epoch: int, lengths: Sequence[int] | None = None,
    bucket: bool = False, shuffle: bool = True, micro_batches: int = 1,
) -> list[list[int]]:
    """The example indices of every batch of ``epoch``, in training order.

    Batches are formed per optimizer step (``micro_batches`` x ``batch_size`` examples)
    and then split, so k accumulated micro-batches hold exactly the examples one batch of
    k x b would: accumulation never changes what a step sees, with or without bucketing.
    """
    generator = _generator(seed, epoch)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    return batches_from_order(order, batch_size, lengths if bucket else None, generator if shuffle else None, micro_batches)


def batches_from_order(
    order: list[int], batch_size: int, lengths: Sequence[int] | None = None,
    generator: torch.Generator | None = None, micro_batches: int = 1,
) -> list[list[int]]:
    """Cut an ordered list of example indices into batches, formed per optimizer step.

    With ``lengths``, examples are sorted by length within windows (bucketing) and the
    full steps are then shuffled with ``generator`` (if given); a short last step stays
    last, where the loop's grouping of micro-batches into steps expects it.
    """
    n, step_size = len(order), batch_size * micro_batches
    if lengths is None:
        steps = [order[i : i + step_size] for i in range(0, n, step_size)]
    else:
        window = step_size * BUCKET_WINDOW_BATCHES
        steps = []
        for start in range(0, n, window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
            steps += [chunk[i : i + step_size] for i in range(0, len(chunk), step_size)]
        if generator is not None and steps:
            tail = steps[-1:] if len(steps[-1]) < step_size else []
            full = steps[: len(steps) - len(tail)]
            steps = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + tail
    return [step[i : i + batch_size] for step in steps for i in range(0, len(step), batch_size)]


def padded_fraction(batches: list[list[int]], lengths: Sequence[int]) -> float:
    """Share of token slots that are padding when each batch pads to its longest row."""
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / slots if slots else 0.0


class _Indexed:
    """A dataset view whose items carry their index, so a batch knows which examples it
    holds (loss-aware samplers record per-example losses by index)."""

    def __init__(self, examples: Sequence):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        return index, self.examples[index]


class _IndexedCollate:
    """Collate ``(index, example)`` items into ``(index tensor, batch)``. A class, not a
    closure, so worker processes can receive it."""

    def __init__(self, collate: Callable | None):
        self.collate = collate or default_collate

    def __call__(self, items):
        return torch.tensor([i for i, _ in items]), self.collate([example for _, example in items])


def batch_loader(examples: Sequence, batches: list[list[int]], collate: Callable | None, workers: int = 0,
                 with_indices: bool = False) -> DataLoader:
    """A loader over exactly ``batches`` (index lists), collated in ``workers`` processes.
    With ``with_indices`` it yields ``(example indices, batch)`` pairs."""
    if with_indices:
        examples, collate = _Indexed(examples), _IndexedCollate(collate)
    # A private generator: without one, every new DataLoader iterator draws its base seed
    # from the global torch RNG, so a resumed run (one extra loader) would get different
    # dropout masks from then on.
    return DataLoader(
        examples, batch_sampler=batches, collate_fn=collate, num_workers=workers,
        persistent_workers=False, prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(0),
    )


def epoch_loader(examples: Sequence, batch_size: int, collate: Callable | None, seed: int, epoch: int, shuffle: bool = True) -> DataLoader:
    """All batches of one epoch (no bucketing, no resume offset): the simple case."""
    return batch_loader(examples, epoch_order(len(examples), batch_size, seed, epoch, shuffle=shuffle), collate)
