"""Gradient accumulation: several micro-batches per optimizer step.

Why: the effective batch size is what the optimization needs; the micro-batch is what
memory allows. Accumulating k micro-batches of b reaches an effective batch of k*b at
the activation memory of b. The loop normalises the loss by the samples (or tokens) of
the whole step, so the update equals one big batch exactly, even for a short last group.
"""
from __future__ import annotations

from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register


class AccumulationSettings(CutConfig):
    shorthand_field = "steps"
    steps: int = Field(2, ge=1, description="Micro-batches per optimizer step.")


@register
class GradAccumulation(Cut):
    name = "grad_accumulation"
    Config = AccumulationSettings
    summary = "Accumulate k micro-batches per optimizer step: a big effective batch at small-batch memory."
    order = 40

    def setup(self, run) -> None:
        run.micro_batches_per_step = self.config.steps
