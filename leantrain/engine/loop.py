"""The training loop. Read it top to bottom: this is all a leantrain run does per step.

It owns device placement, the step (forward, loss, backward, optimizer, scheduler),
evaluation cadence and stopping. It knows hook points, never techniques: LoRA,
precision, checkpointing, accumulation and early stopping all act through ``cuts``.

Losses are summed, then divided by the number of samples (or target tokens) in the
whole optimizer step, so k micro-batches of b give exactly the update of one batch of
k*b, including a short last group at the end of an epoch.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Iterator

import torch

from leantrain.cuts.base import CutStack
from leantrain.engine.context import RunContext


def move_to_device(batch, device: torch.device):
    """Move every tensor of a batch (a tensor, or a dict/list/tuple of them) to ``device``."""
    if torch.is_tensor(batch):
        # non_blocking only helps (and is only safe) for pinned host memory going to CUDA.
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def step_groups(batches: Iterable, size: int, wait: list[float]) -> Iterator[list]:
    """Yield lists of ``size`` micro-batches (the last may be shorter), timing data waits."""
    group: list = []
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        batch = next(iterator, None)
        wait[0] += time.perf_counter() - started
        if batch is None:
            break
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def fit(
    run: RunContext,
    cuts: CutStack,
    task,
    make_train_batches: Callable[[int], Iterable],
    evaluate: Callable[[], dict[str, float]],
    steps_per_epoch: int,
    should_stop: Callable[[RunContext], str | None] = lambda run: None,
) -> None:
    """Train ``run.model`` until the step budget, an epoch budget or a cut says stop."""
    model, optimizer, state, cfg = run.model, run.optimizer, run.state, run.train
    total_epochs = math.ceil(cfg.epochs)
    eval_every = cfg.eval_every or steps_per_epoch
    clip_params = run.trainable_parameters()
    model.train()
    started = time.perf_counter()
    wait = [0.0]

    while state.epoch < total_epochs and state.stop_reason is None:
        for group in step_groups(make_train_batches(state.epoch), run.micro_batches_per_step, wait):
            # -- forward and backward over the micro-batches of one optimizer step --
            denominator = sum(task.count(batch) for batch in group)
            step_loss = torch.zeros((), device=run.device)
            for batch in group:
                batch = move_to_device(batch, run.device)
                with cuts.forward_context(run):
                    loss_sum = task.loss_sum(model, batch)
                loss = loss_sum / denominator
                cuts.scale_loss(loss, run).backward()
                step_loss += loss.detach()
                state.batch_in_epoch += 1

            # -- the update --
            cuts.on_before_optimizer_step(optimizer, run)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(clip_params, cfg.max_grad_norm)
            cuts.optimizer_step(optimizer, run)
            run.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples_seen += sum(task.batch_size(batch) for batch in group)
            cuts.on_step_end(run)

            # -- bookkeeping: logging, evaluation, stopping --
            state.train_seconds += time.perf_counter() - started
            state.data_wait_seconds += wait[0]
            started, wait[0] = time.perf_counter(), 0.0
            if state.step % cfg.log_every == 0 or state.step == run.total_steps:
                # .item() syncs with the device: only on logging steps.
                run.log({"event": "train", "loss": step_loss.item(), "lr": run.scheduler.get_last_lr()[0]})
            if state.step % eval_every == 0 or state.step == run.total_steps:
                state.last_eval, state.last_eval_step = evaluate(), state.step
                run.log({"event": "eval", **state.last_eval})
                state.stop_reason = cuts.on_eval_end(state.last_eval, run)
                if state.stop_reason:
                    state.status = "early_stopped"
                started = time.perf_counter()  # evaluation time is not training time
            if state.stop_reason is None and state.step >= run.total_steps:
                state.stop_reason, state.status = "reached the step budget", "completed"
            if state.stop_reason is None and (reason := should_stop(run)):
                state.stop_reason, state.status = reason, "budget_exhausted"
            if state.stop_reason:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0

    if state.stop_reason is None:
        state.stop_reason, state.status = "finished all epochs", "completed"
    cuts.on_fit_end(run)
