"""Build everything a run needs from a recipe, without running it.

``build_session`` is shared by ``train`` (the run), ``smoke`` (a few checks before a
run) and the tests: data, model, task, cuts, optimizer, scheduler and the batch makers.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from leantrain.cuts import CutStack, build_cuts
from leantrain.data.batching import batch_loader, batches_from_order, epoch_order
from leantrain.engine.context import RunContext
from leantrain.engine.distributed import Parallel, shard_epoch
from leantrain.engine.tasks import CausalLMTask, ClassificationTask, CustomTask
from leantrain.errors import DeviceError, UserError
from leantrain.observe.accountant import MemoryAccountant
from leantrain.plan.ledger import CostLedger
from leantrain.recipe import Recipe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:  # under torchrun: one GPU per process
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"train.device: {name!r} requested but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("train.device: 'mps' requested but MPS is not available")
    return device


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


def _example_length(example) -> int | None:
    ids = example.get("input_ids") if isinstance(example, dict) else None
    return len(ids) if ids is not None else None


def example_lengths(examples: Sequence) -> list[int] | None:
    """Token lengths of tokenized examples (from the storage, no loop over rows); None
    for data without ``input_ids`` (a user's own tensors)."""
    if not len(examples) or _example_length(examples[0]) is None:
        return None
    from leantrain.data.shards import read_lengths

    return read_lengths(examples)


def inference_order(examples: Sequence, batch_size: int) -> list[list[int]]:
    """Batches for a pass without gradients (evaluation, scoring), longest rows first:
    every batch pads only to rows of nearly its own length. In data order, eval batches
    padded most rows to the longest of 32 random ones; on a held-out topic set (925 rows)
    sorting took the evaluation from 5.6 s to ~1.0 s (docs/benchmarks.md, "The plain
    recipe"). The metrics are sums over examples, so the order cannot change them."""
    lengths = example_lengths(examples)
    order = list(range(len(examples)))
    if lengths is not None:
        order.sort(key=lambda i: lengths[i], reverse=True)
    return batches_from_order(order, batch_size)


@dataclass
class Session:
    recipe: Recipe
    run: RunContext
    cuts: CutStack
    task: Any
    train_examples: Sequence
    eval_examples: Sequence
    collate: Callable | None
    steps_per_epoch: int
    tokenizer: Any = None
    data_info: Any = None
    lengths: list[int] | None = None
    token_slots: int = 0                 # padded token positions of the batches trained on
    real_tokens: int = 0
    eval_order: list[list[int]] | None = None  # formed on the first evaluation, then reused

    def epoch_batches(self, epoch: int, grouping: int | None = None) -> list[list[int]]:
        """Every micro-batch of ``epoch`` over all ranks, formed in optimizer steps of
        ``grouping`` micro-batches (default: this run's)."""
        cfg, run = self.recipe.train, self.run
        current, run.micro_batches_per_step = run.micro_batches_per_step, grouping or run.micro_batches_per_step
        try:  # cuts that reorder whole steps see the grouping the order is formed with
            batches = epoch_order(len(self.train_examples), cfg.batch_size, cfg.seed, epoch, self.lengths,
                                  cfg.bucket_by_length, micro_batches=run.micro_batches_per_step)
            return self.cuts.order_batches(batches, epoch, run, self.lengths)
        finally:
            run.micro_batches_per_step = current

    def batches_from(self, epoch: int, start: int):
        """This rank's ``(example indices, batch)`` pairs of ``epoch`` from global
        micro-batch ``start`` on: the skipped ones are never built. An epoch resumed on
        another number of ranks keeps the order it was formed with, so no example is
        skipped or repeated; a stand-in (see ``shard_epoch``) has empty indices."""
        run, state = self.run, self.run.state
        if start == 0 or not state.order_micro_batches:
            state.order_micro_batches = run.micro_batches_per_step
        batches = self.epoch_batches(epoch, state.order_micro_batches)
        mine = shard_epoch(batches, start, run.micro_batches_per_rank, run.world_size, run.parallel.rank)
        batches = [indices for indices, _ in mine]
        loader = batch_loader(self.train_examples, batches, self.collate, self.recipe.train.data_workers, with_indices=True)
        if not all(real for _, real in mine):
            loader = ((indices if real else indices[:0], batch) for (_, real), (indices, batch) in zip(mine, loader))
        return loader if self.lengths is None else self._count_padding(batches, loader)

    def _count_padding(self, batches: list[list[int]], loader):
        """Count the token slots of the batches actually trained on, and how many hold
        real tokens: the padded fraction then reflects every ordering cut."""
        for indices, item in zip(batches, loader):
            self.token_slots += max(self.lengths[i] for i in indices) * len(indices)
            self.real_tokens += sum(self.lengths[i] for i in indices)
            yield item

    def score_examples(self) -> torch.Tensor:
        """Each training example's loss under the current weights, in eval mode and
        without gradients: one forward pass over the data, for loss-aware orderings."""
        from leantrain.engine.loop import move_to_device

        if not getattr(self.task, "per_example", False):
            raise UserError("a loss-based ordering needs one loss per example; a custom loss_fn returns only a batch mean")
        run = self.run
        order = inference_order(self.train_examples, self.recipe.train.batch_size)
        scores = torch.empty(len(self.train_examples))
        run.model.eval()
        try:
            with torch.no_grad():
                for indices, batch in batch_loader(self.train_examples, order, self.collate, with_indices=True):
                    run.signals.check()
                    with self.cuts.forward_context(run):
                        scores[indices] = self.task.example_losses(run.model, move_to_device(batch, run.device)).float().cpu()
        finally:
            run.model.train()
        return scores

    def padded_token_fraction(self) -> float | None:
        """Share of the trained batches' token slots that were padding (None before any
        batch, or for data without token lengths)."""
        return 1.0 - self.real_tokens / self.token_slots if self.token_slots else None

    def evaluate(self) -> dict[str, float]:
        """Eval metrics; checks for a stop signal between batches (a safe point)."""
        if len(self.eval_examples) == 0:
            return {}
        run, cfg = self.run, self.recipe.train
        if self.eval_order is None:
            self.eval_order = inference_order(self.eval_examples, cfg.batch_size)
        loader = batch_loader(self.eval_examples, self.eval_order, self.collate)

        def watched():
            for batch in loader:
                run.signals.check()
                yield batch

        run.model.eval()
        try:
            return self.task.evaluate(run.model, watched(), lambda: self.cuts.forward_context(run), run.device)
        finally:
            run.model.train()


def load_hf_parts(recipe: Recipe, check: Callable[[], None] = lambda: None):
    from leantrain.data.text import load_text_data
    from leantrain.data.preference import PREFERENCE
    from leantrain.engine.preference import PreferenceTask, check_recipe
    from leantrain.models import load_model, load_tokenizer

    check_recipe(recipe)  # a preference recipe DPO cannot run fails before anything loads
    tokenizer = load_tokenizer(recipe.model)
    started = time.perf_counter()
    data = load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path, check)
    # Data preparation alone (read, curate, tokenize or read back from the cache).
    data.stats["prepare_seconds"] = round(time.perf_counter() - started, 4)
    model = load_model(recipe.model, data.label_names, tokenizer.pad_token_id)
    if recipe.data.pack:
        from leantrain.data.packing import check_model_packs

        check_model_packs(model)
    task = ClassificationTask(data.majority_label) if recipe.model.task == "sequence-classification" else CausalLMTask()
    chat = recipe.data.chat
    if recipe.data.format == PREFERENCE:
        task = PreferenceTask(recipe.data.preference.beta)
    elif recipe.data.format != "text" and chat.eval_generate:
        from leantrain.engine.chat_eval import ChatTask

        task = ChatTask(tokenizer, data.eval, chat.eval_generate, chat.max_new_tokens, recipe.run_dir() / "samples.jsonl")
    return tokenizer, data, model, task


def build_session(
    recipe: Recipe, *, model=None, loss_fn=None, train_data=None, eval_data=None, collate_fn=None, metric_fn=None,
    check: Callable[[], None] = lambda: None, parallel: Parallel | None = None,
) -> Session:
    """Seed, load data and model, apply the cuts, and size the schedule. With
    ``parallel`` (a torchrun rank), the model is wrapped for distributed training."""
    cfg = recipe.train
    parallel = parallel or Parallel()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the same on every rank: the same initial weights
    device = parallel.device(pick_device(cfg.device))
    tokenizer = data_info = None
    if model is not None:
        if loss_fn is None or train_data is None:
            raise UserError("train(model=...) also needs loss_fn and train_data")
        task = CustomTask(loss_fn, metric_fn)
        train_examples, eval_examples, collate = train_data, eval_data or [], collate_fn
    else:
        tokenizer, data_info, model, task = load_hf_parts(recipe, check)
        train_examples, eval_examples, collate = data_info.train, data_info.eval, data_info.collate
    if len(train_examples) == 0:
        raise UserError("the training data has no examples")

    cuts = build_cuts(recipe, instruments=(MemoryAccountant(), CostLedger.for_recipe(recipe)))
    run = RunContext(device=device, train=cfg, tokenizer=tokenizer, parallel=parallel, model_section=recipe.model,
                     eval_rows=len(eval_examples))
    cuts.setup(run)  # before sizing the schedule: accumulation changes steps per epoch
    run.micro_batches_per_step *= parallel.world_size  # a step spans every rank's micro-batches
    run.model = cuts.prepare_model(model, run).to(device)
    run.train_model = parallel.wrap(run.model, device)
    run.batches_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
    steps_per_epoch = math.ceil(run.batches_per_epoch / run.micro_batches_per_step)
    run.total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        run.total_steps = min(run.total_steps, cfg.max_steps)
    run.optimizer = make_optimizer(run.model, cfg)
    run.scheduler = make_scheduler(run.optimizer, cfg, run.total_steps)
    lengths = example_lengths(train_examples)
    session = Session(recipe, run, cuts, task, train_examples, eval_examples, collate, steps_per_epoch,
                      tokenizer, data_info, lengths)
    run.score_examples = session.score_examples
    return session
