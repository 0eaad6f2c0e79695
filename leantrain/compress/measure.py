"""What a compression bought and cost: size, latency and eval metrics, measured side by side.

Latency compares models on the same inputs, batch, device and thread count, alternating
between them on every repeat so that a machine busy with other work slows both alike;
the median of the repeats is reported.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from leantrain.errors import DataError, UserError


@dataclass
class EvalData:
    """A run's evaluation split, tokenized exactly as in training, plus its task."""

    examples: list
    collate: object
    task: object
    batch_size: int
    train_examples: list
    label_names: list[str] | None

    def batches(self, examples=None, batch_size: int | None = None):
        from leantrain.data.batching import epoch_loader

        return epoch_loader(examples if examples is not None else self.examples, batch_size or self.batch_size,
                            self.collate, 0, 0, shuffle=False)


def run_recipe(run_dir: str | Path, recipe_path: str | Path | None = None):
    """The recipe a run was trained with: ``recipe_path`` or the run's own config.yaml."""
    from leantrain.recipe import load_recipe

    path = Path(recipe_path) if recipe_path else Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: no recipe; pass --recipe with the recipe the run was trained with")
    return load_recipe(path)


def eval_data(recipe, tokenizer) -> EvalData:
    """The eval split of ``recipe`` (same split, seed and tokenization as training)."""
    from leantrain.data.text import load_text_data
    from leantrain.engine.tasks import CausalLMTask, ClassificationTask

    try:
        data = load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path)
    except DataError as exc:
        raise DataError(f"{exc} (relative data paths resolve from the recipe's folder: pass --recipe with the "
                        "original recipe file)") from None
    if not len(data.eval):
        raise DataError("the recipe has no evaluation split to measure accuracy on (set data.eval or data.eval_fraction)")
    task = ClassificationTask(data.majority_label) if recipe.model.task == "sequence-classification" else CausalLMTask()
    return EvalData(list(data.eval), data.collate, task, recipe.train.batch_size, list(data.train), data.label_names)


@torch.no_grad()
def evaluate(model: nn.Module, data: EvalData) -> dict[str, float]:
    import contextlib

    model.eval()
    metrics = data.task.evaluate(model, data.batches(), contextlib.nullcontext, torch.device("cpu"))
    return {k: round(v, 6) for k, v in metrics.items()}


def latency_batch(data: EvalData, batch_size: int) -> dict:
    """The first ``batch_size`` eval examples as one padded batch, without labels."""
    batch = next(iter(data.batches(data.examples[:batch_size], batch_size)))
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.inference_mode()
def side_by_side_latency(models: dict[str, nn.Module], inputs: dict, repeats: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per forward of each model, alternating models on every repeat."""
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(**inputs)
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model(**inputs)
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}
