"""Batches for one epoch: a seeded shuffle that depends only on (seed, epoch).

Because the order is a pure function of the seed and the epoch, any epoch can be rebuilt
exactly, which is what a resumed run needs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader


def epoch_loader(examples: Sequence, batch_size: int, collate: Callable | None, seed: int, epoch: int, shuffle: bool = True) -> DataLoader:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch) if shuffle else None
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)
