"""Importance sampling: draw the examples the model still gets wrong more often.

Why: once most examples are learned, a uniform epoch spends most of its compute on
gradients that are nearly zero. Drawing example i with probability p_i proportional to
its recent loss spends the steps where the loss is, and weighting its loss by
1 / (N * p_i) keeps the expected gradient equal to the full-data gradient, so the
optimum does not move (Katharopoulos & Fleuret, 2018; Loshchilov & Hutter, 2015).
Whether that reaches a target metric in fewer steps on *your* data is what
``leantrain ablate`` measures; on easy data it may not.

Mechanics: the loop hands every example's (unweighted) loss to ``on_example_losses``;
the cut keeps an exponential moving average per example. At the start of each epoch
after the warm-up it freezes the probabilities for that epoch (they go into the
checkpoint, so a resumed run draws exactly the same examples), draws N examples with
replacement from a generator seeded by (seed, epoch), and answers ``example_weights``
with 1 / (N * p_i). A share of uniform probability is mixed in so no weight exceeds
1 / uniform_mix and no example is starved.
"""
from __future__ import annotations

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.data.batching import batches_from_order
from leantrain.errors import UserError

# Separates this cut's draws from the shuffle of epoch_order (same seed and epoch).
_SEED_SALT = 7_919


class ImportanceSamplingSettings(CutConfig):
    warmup_epochs: int = Field(
        1, ge=0, description="Epochs drawn uniformly first, so every example has a measured loss before sampling leans on it.")
    uniform_mix: float = Field(
        0.3, gt=0.0, le=1.0,
        description="Share of uniform probability mixed in: p_i = (1-m)*loss_i/sum(loss) + m/N. Caps every weight 1/(N*p_i) at 1/m.")
    smoothing: float = Field(
        0.5, ge=0.0, lt=1.0, description="Memory of an example's loss: score = s*old + (1-s)*new each time it is seen (0: latest loss only).")
    reweight: bool = Field(
        True, description="Weight each drawn example's loss by 1/(N*p_i) so the expected gradient is the full-data one. Off: a biased 'focus on hard examples' variant.")


@register
class ImportanceSampling(Cut):
    name = "importance_sampling"
    Config = ImportanceSamplingSettings
    summary = "Draw high-loss examples more often, with weights that keep the gradient unbiased."
    order = 47

    def __init__(self, config: ImportanceSamplingSettings):
        super().__init__(config)
        self.scores: torch.Tensor | None = None      # moving-average loss per example
        self.seen: torch.Tensor | None = None        # which examples have a score yet
        self.plan_epoch = -1                         # the epoch the frozen probabilities are for
        self.plan_probs: torch.Tensor | None = None

    def _allocate(self, n: int, device: torch.device | str = "cpu") -> None:
        if self.scores is None:
            self.scores = torch.zeros(n, device=device)
            self.seen = torch.zeros(n, dtype=torch.bool, device=device)

    def probabilities(self) -> torch.Tensor:
        """p_i from the current scores: loss-proportional, mixed with uniform."""
        scores, seen = self.scores.float().cpu(), self.seen.cpu()
        n = scores.numel()
        uniform = torch.full((n,), 1.0 / n)
        if not seen.any():
            return uniform
        # Examples not seen yet get the mean score: neither starved nor favoured.
        scores = torch.where(seen, scores, scores[seen].mean()).clamp(min=0.0)
        if scores.sum() <= 0:
            return uniform
        mix = self.config.uniform_mix
        return (1.0 - mix) * scores / scores.sum() + mix * uniform

    def order_batches(self, batches, epoch, run, lengths):
        n = sum(len(b) for b in batches)
        self._allocate(n)
        if epoch < self.config.warmup_epochs:
            return batches
        if self.plan_epoch != epoch:
            self.plan_epoch, self.plan_probs = epoch, self.probabilities()
            self._report(run)
        generator = torch.Generator().manual_seed(run.train.seed * 1_000_003 + epoch + _SEED_SALT)
        drawn = torch.multinomial(self.plan_probs, n, replacement=True, generator=generator).tolist()
        bucket = lengths if run.train.bucket_by_length else None
        return batches_from_order(drawn, len(batches[0]), bucket, generator, run.micro_batches_per_step)

    def example_weights(self, indices, run):
        if not self.config.reweight or self.plan_probs is None or run.state.epoch != self.plan_epoch:
            return None
        return 1.0 / (self.plan_probs.numel() * self.plan_probs[indices])

    def on_example_losses(self, indices, losses, run):
        if losses.numel() != indices.numel():
            raise UserError("cuts.importance_sampling needs one loss per example; a custom loss_fn returns only a batch mean")
        # Kept on the loss's device: no host sync in the hot loop.
        if self.scores.device != losses.device:
            self.scores, self.seen = self.scores.to(losses.device), self.seen.to(losses.device)
        index = indices.to(losses.device)
        s = self.config.smoothing
        old = self.scores[index]
        new = torch.where(self.seen[index], s * old + (1.0 - s) * losses.float(), losses.float())
        self.scores[index] = new
        self.seen[index] = True

    def _report(self, run) -> None:
        """Effective sample size and the largest weight: how far this epoch is from uniform."""
        p = self.plan_probs
        run.extras["importance_sampling"] = {
            "epoch": self.plan_epoch,
            "effective_sample_fraction": round(float(1.0 / (p.square().sum() * p.numel())), 4),
            "max_weight": round(float(1.0 / (p.numel() * p.min())), 4),
        }

    def state_dict(self):
        if self.scores is None:
            return {}
        state = {"scores": self.scores.cpu(), "seen": self.seen.cpu(), "plan_epoch": self.plan_epoch}
        if self.plan_probs is not None:
            state["plan_probs"] = self.plan_probs
        return state

    def load_state_dict(self, state):
        if not state:
            return
        self.scores, self.seen = state["scores"].clone(), state["seen"].clone()
        self.plan_epoch = int(state["plan_epoch"])
        self.plan_probs = state.get("plan_probs")
