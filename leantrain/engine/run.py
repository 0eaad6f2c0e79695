"""One run, wired from a recipe: data, model, cuts, optimizer, loop, outputs.

``train()`` is the public API behind ``leantrain train``. It also takes a plain
``torch.nn.Module`` with a loss function and datasets, so the cuts are usable without
Hugging Face models.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from leantrain.cuts import build_cuts
from leantrain.data.batching import epoch_loader
from leantrain.engine.context import RunContext
from leantrain.engine.loop import fit
from leantrain.engine.outputs import save_model, write_summary
from leantrain.engine.tasks import CausalLMTask, ClassificationTask, CustomTask
from leantrain.errors import DeviceError, UserError
from leantrain.observe.accountant import MemoryAccountant
from leantrain.observe.memory import peak_memory, reset_peak
from leantrain.observe.metrics import MetricsLog
from leantrain.recipe import Recipe, load_recipe, parse_recipe


@dataclass
class RunResult:
    summary: dict
    run_dir: Path
    model: torch.nn.Module


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"train.device: {name!r} requested but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("train.device: 'mps' requested but MPS is not available")
    return device


def as_recipe(recipe: Recipe | str | os.PathLike | dict, overrides: list[str] | None = None) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        from leantrain.recipe import apply_overrides

        return parse_recipe(apply_overrides(recipe, overrides or []), "<dict>", overrides=overrides)
    return load_recipe(recipe, overrides)


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters (every weight is frozen)")
    # No weight decay on biases and norms (1-D tensors): standard AdamW practice.
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def make_scheduler(optimizer, cfg, total_steps: int):
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps)


def budget_guard(recipe: Recipe) -> Callable[[RunContext], str | None]:
    budget, price = recipe.budget, recipe.hardware.price_per_hour

    def check(run: RunContext) -> str | None:
        hours = run.state.train_seconds / 3600
        if budget.max_hours is not None and hours >= budget.max_hours:
            return f"budget.max_hours={budget.max_hours} reached"
        if budget.max_usd is not None and hours * price >= budget.max_usd:
            return f"budget.max_usd={budget.max_usd} reached"
        return None

    return check


def _hf_setup(recipe: Recipe):
    """Tokenizer, data and model for a Hugging Face recipe."""
    from leantrain.data.text import load_text_data
    from leantrain.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(recipe.model)
    data = load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path)
    model = load_model(recipe.model, data.label_names, tokenizer.pad_token_id)
    if recipe.model.task == "sequence-classification":
        task = ClassificationTask(data.majority_label)
    else:
        task = CausalLMTask()
    return tokenizer, data, model, task


def train(
    recipe: Recipe | str | os.PathLike | dict,
    *,
    overrides: list[str] | None = None,
    model: torch.nn.Module | None = None,
    loss_fn: Callable | None = None,
    train_data: Sequence | None = None,
    eval_data: Sequence | None = None,
    collate_fn: Callable | None = None,
    metric_fn: Callable | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Train as the recipe says and write the run directory; returns the summary.

    Pass ``model`` + ``loss_fn`` + ``train_data`` (any indexable dataset) to train your
    own ``torch.nn.Module``; the recipe's ``model`` and ``data`` sections are then ignored.
    """
    recipe = as_recipe(recipe, overrides)
    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    run_dir = recipe.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    prepare_started = time.perf_counter()
    tokenizer = data_info = None
    if model is not None:
        if loss_fn is None or train_data is None:
            raise UserError("train(model=...) also needs loss_fn and train_data")
        task = CustomTask(loss_fn, metric_fn)
        train_examples, eval_examples, collate = train_data, eval_data or [], collate_fn
    else:
        tokenizer, data_info, model, task = _hf_setup(recipe)
        train_examples, eval_examples, collate = data_info.train, data_info.eval, data_info.collate
    if len(train_examples) == 0:
        raise UserError("the training data has no examples")
    prepare_seconds = time.perf_counter() - prepare_started

    cuts = build_cuts(recipe, instruments=(MemoryAccountant(),))
    run = RunContext(device=device, train=cfg)
    cuts.setup(run)  # before sizing the schedule: accumulation changes steps per epoch
    run.model = model = cuts.prepare_model(model, run).to(device)
    run.batches_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
    steps_per_epoch = math.ceil(run.batches_per_epoch / run.micro_batches_per_step)
    run.total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        run.total_steps = min(run.total_steps, cfg.max_steps)
    run.optimizer = make_optimizer(model, cfg)
    run.scheduler = make_scheduler(run.optimizer, cfg, run.total_steps)

    def make_batches(epoch: int):
        return epoch_loader(train_examples, cfg.batch_size, collate, cfg.seed, epoch)

    def evaluate() -> dict[str, float]:
        if len(eval_examples) == 0:
            return {}
        model.eval()
        loader = epoch_loader(eval_examples, cfg.batch_size, collate, cfg.seed, 0, shuffle=False)
        metrics = task.evaluate(model, loader, lambda: cuts.forward_context(run), device)
        model.train()
        return metrics

    log = MetricsLog(run_dir / "metrics.jsonl", run.total_steps, show_progress)
    run.log = lambda event: log.write(event, run.state)
    reset_peak(device)
    try:
        fit(run, cuts, task, make_batches, evaluate, steps_per_epoch, budget_guard(recipe))
        state = run.state
        weights_changed = "restored_best_step" in run.extras
        # Reuse the last evaluation when it was of exactly these weights.
        final_eval = state.last_eval if state.last_eval_step == state.step and not weights_changed else evaluate()
        log.write({"event": "final_eval", **final_eval}, run.state)
    except BaseException as exc:
        run.state.status = "failed"
        run.state.stop_reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        write_summary(run_dir, recipe, run, cuts, {}, {}, prepare_seconds, peak_memory(device, run.extras))
        raise
    finally:
        log.close()

    saved = save_model(run_dir, recipe, model, tokenizer, data_info, cuts, run) if recipe.output.save_model else {}
    summary = write_summary(run_dir, recipe, run, cuts, final_eval, saved, prepare_seconds, peak_memory(device, run.extras))
    return RunResult(summary=summary, run_dir=run_dir, model=model)


def describe_result(summary: dict) -> str:
    """One human line for the end of a run."""
    ev = summary.get("eval", {})
    parts = [f"status={summary['status']}", f"steps={summary['steps']}", f"{summary['train_seconds']:.1f}s"]
    if "accuracy" in ev:
        parts.append(f"accuracy={ev['accuracy']:.3f} (majority class {ev.get('majority_class_accuracy', float('nan')):.3f})")
    if "perplexity" in ev:
        parts.append(f"perplexity={ev['perplexity']:.2f}")
    parts.append(f"cost=${summary['cost_usd']:.4f}")
    return " ".join(parts)
