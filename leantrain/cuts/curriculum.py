"""Curriculum: show easy (short) examples first, then train on the usual shuffled order.

Why: early in fine-tuning, short examples give cheap, low-variance gradient steps; a
length curriculum ("sequence length warmup") lets the first epoch run faster and more
stably. The order is computed per optimizer step (never splitting the micro-batches of
one step) and is a pure function of the epoch, so resumed runs see the same order.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError


class CurriculumSettings(CutConfig):
    by: Literal["length"] = Field("length", description="Difficulty score: `length` (tokens per example).")
    epochs: int = Field(1, ge=1, description="Epochs trained in easy-to-hard order; later epochs use the usual shuffled order.")


@register
class Curriculum(Cut):
    name = "curriculum"
    Config = CurriculumSettings
    summary = "Easy-to-hard (short-to-long) batch order for the first epochs."
    order = 45

    def order_batches(self, batches, epoch, run, lengths):
        if epoch >= self.config.epochs:
            return batches
        if lengths is None:
            raise UserError("cuts.curriculum: `by: length` needs tokenized examples (input_ids); this data has none")
        size = max(run.micro_batches_per_step, 1)
        steps = [batches[i : i + size] for i in range(0, len(batches), size)]
        # A short last step stays last: the loop groups micro-batches into steps in order.
        tail = steps[-1:] if len(steps[-1]) < size else []
        full = steps[: len(steps) - len(tail)]
        full.sort(key=lambda step: max(lengths[i] for batch in step for i in batch))  # stable: ties keep the shuffle
        return [batch for step in full + tail for batch in step]
