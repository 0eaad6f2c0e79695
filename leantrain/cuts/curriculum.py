"""Curriculum: show easy examples first, then train on the usual shuffled order.

Why: early in fine-tuning, easy examples give cheap, low-variance gradient steps. Two
scores of "easy" are offered: ``length`` (short first: "sequence length warmup", which
also makes the first epoch's steps faster) and ``loss`` (the examples the starting model
already predicts well first, scored by one forward pass without gradients before the
first epoch; its cost is counted in the run's time and dollars). The order is a pure
function of the epoch and of scores kept in the checkpoint, so a resumed run sees the
same order.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.data.batching import batches_from_order
from leantrain.errors import UserError


class CurriculumSettings(CutConfig):
    by: Literal["length", "loss"] = Field(
        "length", description="Difficulty score: `length` (tokens per example) or `loss` (the starting model's loss on each example, one scoring pass).")
    epochs: int = Field(1, ge=1, description="Epochs trained in easy-to-hard order; later epochs use the usual shuffled order.")


def _split_steps(batches: list[list[int]], size: int) -> tuple[list[list[list[int]]], list[list[list[int]]]]:
    """Group batches into optimizer steps of ``size`` micro-batches. A short last step is
    returned apart: it must stay last, where the loop's grouping of steps expects it."""
    steps = [batches[i : i + size] for i in range(0, len(batches), size)]
    tail = steps[-1:] if steps and len(steps[-1]) < size else []
    return steps[: len(steps) - len(tail)], tail


@register
class Curriculum(Cut):
    name = "curriculum"
    Config = CurriculumSettings
    summary = "Easy-to-hard batch order (by length or by a first pass's loss) for the first epochs."
    order = 45

    def __init__(self, config: CurriculumSettings):
        super().__init__(config)
        self.scores: torch.Tensor | None = None  # per-example loss of the scoring pass

    def order_batches(self, batches, epoch, run, lengths):
        if epoch >= self.config.epochs:
            return batches
        size = max(run.micro_batches_per_step, 1)
        full, tail = _split_steps(batches, size)
        if self.config.by == "length":
            if lengths is None:
                raise UserError("cuts.curriculum: `by: length` needs tokenized examples (input_ids); this data has none")
            full.sort(key=lambda step: max(lengths[i] for batch in step for i in batch))  # stable: ties keep the shuffle
            return [batch for step in full + tail for batch in step]
        # by loss: regroup the examples of the full steps from easiest to hardest, so a
        # step holds examples of similar difficulty (sorting random groups would average
        # the difficulty away). Length bucketing gives way to the difficulty order here.
        if self.scores is None:
            self.scores = run.score_examples()
            run.extras["curriculum"] = {"scored_examples": int(self.scores.numel()),
                                        "mean_first_pass_loss": round(float(self.scores.mean()), 4)}
        indices = torch.tensor([i for step in full for batch in step for i in batch], dtype=torch.long)
        easiest_first = indices[torch.argsort(self.scores[indices], stable=True)].tolist()
        regrouped = batches_from_order(easiest_first, len(batches[0]), micro_batches=size)
        return regrouped + [batch for step in tail for batch in step]

    def state_dict(self):
        return {"scores": self.scores} if self.scores is not None else {}

    def load_state_dict(self, state):
        if "scores" in state:
            self.scores = state["scores"].clone()
