"""Tasks: how a batch becomes a summed loss, and how a model is evaluated.

A task returns one summed loss per example (``example_losses``) and says how many
samples (or target tokens) a batch holds; the loop sums the examples' losses (weighted,
if a sampler asks for it) and divides by the count of the whole optimizer step, which is
what makes gradient accumulation exact. Per-example losses are also what loss-aware
samplers (importance sampling, a loss curriculum) learn from.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _first_tensor(batch) -> torch.Tensor:
    if torch.is_tensor(batch):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch
    return next(v for v in values if torch.is_tensor(v))


class ClassificationTask:
    """Sequence classification with cross-entropy; metrics: accuracy, majority baseline."""

    per_example = True  # example_losses has one entry per example

    def __init__(self, majority_label: int | None = None):
        self.majority_label = majority_label

    def count(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    batch_size = count

    def logits(self, model, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits

    def example_losses(self, model, batch: dict) -> torch.Tensor:
        logits = self.logits(model, batch)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        return self.example_losses(model, batch).sum()

    @torch.no_grad()
    def evaluate(self, model, batches, forward_context, device) -> dict[str, float]:
        from leantrain.engine.loop import move_to_device

        loss, correct, majority, n = 0.0, 0, 0, 0
        for batch in batches:
            batch = move_to_device(batch, device)
            with forward_context():
                logits = self.logits(model, batch).float()
            labels = batch["labels"]
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            if self.majority_label is not None:
                majority += (labels == self.majority_label).sum().item()
            n += labels.shape[0]
        metrics = {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}
        if self.majority_label is not None:
            metrics["majority_class_accuracy"] = majority / max(n, 1)
        return metrics


class CausalLMTask:
    """Next-token prediction; the count is the number of target tokens, not of rows."""

    per_example = True

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def batch_size(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    def example_losses(self, model, batch: dict) -> torch.Tensor:
        """Each row's summed next-token loss (padding and ignored targets count zero)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        # Shift the labels, not the logits: slicing the (batch, length, vocab) logits copies
        # them for the loss and again for their gradient (measured: 26 MB less peak RSS on
        # the LLM demo; the allocator's fragmentation dominates there, docs/chat.md).
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
        per_token = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return per_token.view(targets.shape).sum(dim=1)

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        return self.example_losses(model, batch).sum()

    @torch.no_grad()
    def evaluate(self, model, batches, forward_context, device) -> dict[str, float]:
        from leantrain.engine.loop import move_to_device

        total, tokens = 0.0, 0
        for batch in batches:
            batch = move_to_device(batch, device)
            with forward_context():
                total += self.loss_sum(model, batch).item()
            tokens += self.count(batch)
        loss = total / max(tokens, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


class CustomTask:
    """A plain ``torch.nn.Module`` trained with the user's loss function.

    ``loss_fn(model, batch)`` returns the mean loss over the batch's samples (the usual
    PyTorch convention); it is re-weighted by the batch size so accumulation stays exact.
    ``metric_fn(model, batch) -> {name: mean value}`` optionally adds eval metrics,
    averaged over samples.
    """

    per_example = False

    def __init__(self, loss_fn: Callable, metric_fn: Callable | None = None):
        self.loss_fn, self.metric_fn = loss_fn, metric_fn

    def count(self, batch) -> int:
        return int(_first_tensor(batch).shape[0])

    batch_size = count

    def example_losses(self, model, batch) -> torch.Tensor:
        """The user's mean loss gives no per-example values: one entry for the whole
        batch. Samplers that need per-example losses refuse such tasks (see
        ``per_example``)."""
        return (self.loss_fn(model, batch) * self.count(batch)).reshape(1)

    def loss_sum(self, model, batch) -> torch.Tensor:
        return self.example_losses(model, batch).sum()

    @torch.no_grad()
    def evaluate(self, model, batches, forward_context, device) -> dict[str, float]:
        from leantrain.engine.loop import move_to_device

        sums: dict[str, float] = {"loss": 0.0}
        n = 0
        for batch in batches:
            batch = move_to_device(batch, device)
            size = self.count(batch)
            with forward_context():
                sums["loss"] += float(self.loss_sum(model, batch))
                for name, value in (self.metric_fn(model, batch) if self.metric_fn else {}).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * size
            n += size
        return {k: v / max(n, 1) for k, v in sums.items()}
