"""The training loop. Read it top to bottom: this is all a leantrain run does per step.

It owns device placement, the step (forward, loss, backward, optimizer, scheduler),
evaluation and checkpoint cadence, and stopping. It knows hook points, never
techniques: LoRA, precision, checkpointing, accumulation and early stopping all act
through ``cuts``.

Losses are summed, then divided by the number of samples (or target tokens) in the
whole optimizer step, so k micro-batches of b give exactly the update of one batch of
k*b, including a short last group at the end of an epoch. Under torchrun each rank
trains on its share of every step and divides by the count of the whole step over all
ranks (``run.parallel``), so W ranks give the update of one process accumulating W.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Callable, Iterable, Iterator

import torch

from leantrain.cuts.base import CutStack
from leantrain.engine.context import RunContext
from leantrain.engine.signals import Preempted


def move_to_device(batch, device: torch.device):
    """Move every tensor of a batch (a tensor, or a dict/list/tuple of them) to ``device``."""
    if torch.is_tensor(batch):
        # non_blocking only helps (and is only safe) for pinned host memory going to CUDA.
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
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
    batches_from: Callable[[int, int], Iterable],
    evaluate: Callable[[], dict[str, float]],
    steps_per_epoch: int,
    checkpoint: Callable[[str], None] = lambda why: None,
    should_stop: Callable[[RunContext], str | None] = lambda run: None,
) -> None:
    """Train ``run.model`` until the step budget, an epoch budget, a cut, a guard or a
    stop signal says stop. ``batches_from(epoch, start)`` yields this rank's
    ``(example indices, batch)`` pairs of that epoch from global micro-batch ``start``
    on (empty indices: a stand-in that only joins the gradient all-reduce);
    ``checkpoint(why)`` is told "due", "preempted" or "end" and decides whether to save."""
    optimizer, state, cfg, parallel = run.optimizer, run.state, run.train, run.parallel
    model = run.train_model or run.model
    total_epochs = math.ceil(cfg.epochs)
    eval_every = cfg.eval_every or steps_per_epoch
    clip_params = run.trainable_parameters()
    max_norm = cfg.max_grad_norm or math.inf

    def stop(reason: str, status: str) -> None:
        state.stop_reason, state.status = reason, status

    def run_eval() -> None:
        state.last_eval, state.last_eval_step = evaluate(), state.step
        if not state.last_eval:
            return  # nothing to evaluate on (no eval data, or smoke's stand-in): no metric to act on
        run.log({"event": "eval", **state.last_eval})
        if reason := cuts.on_eval_end(state.last_eval, run):
            stop(reason, "early_stopped")

    model.train()
    started = time.perf_counter()
    wait = [0.0]
    try:
        # A resumed run whose evaluation was interrupted by preemption redoes it first.
        if state.step > 0 and state.last_eval_step != state.step and (state.step % eval_every == 0 or state.step >= run.total_steps):
            run_eval()
        if state.stop_reason is None and state.step >= run.total_steps:
            stop("reached the step budget", "completed")

        while state.epoch < total_epochs and state.stop_reason is None:
            for group in step_groups(batches_from(state.epoch, state.batch_in_epoch), run.micro_batches_per_rank, wait):
                # -- forward and backward over the micro-batches of one optimizer step --
                real = [(indices, batch) for indices, batch in group if len(indices)]
                # The whole step's count over all ranks (one all-reduce under torchrun).
                denominator, step_samples, step_batches = parallel.totals(
                    [sum(task.count(b) for _, b in real), sum(task.batch_size(b) for _, b in real), len(real)])
                step_loss = torch.zeros((), device=run.device)
                for position, (indices, batch) in enumerate(group):
                    parallel.reseed(cfg.seed, state.step, position)  # dropout masks follow the data, not the ranks
                    batch = move_to_device(batch, run.device)
                    with parallel.micro_step(model, last=position == len(group) - 1):  # sync gradients once per step
                        with cuts.forward_context(run):
                            losses = cuts.adjust_example_losses(task.example_losses(model, batch), batch, run)
                            # A sampler that draws examples unevenly weights them back (None: all 1);
                            # a stand-in weighs nothing.
                            weights = cuts.example_weights(indices, run) if len(indices) else torch.zeros_like(losses)
                            weighted = losses if weights is None else losses * weights.to(losses.device, losses.dtype)
                            loss = weighted.sum() / denominator
                        if len(indices):
                            cuts.on_example_losses(indices, losses.detach(), run)
                        # DDP averages gradients over ranks; each rank's share is of the global sum.
                        cuts.scale_loss(loss * run.world_size, run).backward()
                    step_loss += loss.detach()
                step_loss = parallel.sum(step_loss)
                state.batch_in_epoch += int(step_batches)

                # -- the update, skipped when the loss or a gradient is NaN/Inf --
                cuts.on_before_optimizer_step(optimizer, run)
                grad_norm = parallel.clip_grad_norm(clip_params, max_norm)
                loss_ok, grads_ok = torch.stack([step_loss.isfinite(), grad_norm.isfinite()]).tolist()  # one host sync
                if loss_ok and grads_ok:
                    cuts.optimizer_step(optimizer, run)
                    state.bad_steps_in_a_row = 0
                else:
                    # An fp16 overflow that the grad scaler handles is routine, not divergence.
                    routine = cuts.on_skipped_step(run) and loss_ok
                    state.skipped_steps += 1
                    state.bad_steps_in_a_row += 0 if routine else 1
                    run.log({"event": "skipped_step", "loss": step_loss.item(), "grad_norm": grad_norm.item()})
                run.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.samples_seen += int(step_samples)
                cuts.on_step_end(run)

                # -- bookkeeping: time, logging, evaluation, checkpoints, stopping --
                state.train_seconds += time.perf_counter() - started
                state.data_wait_seconds += wait[0]
                if state.step % cfg.log_every == 0 or state.step == run.total_steps:
                    run.log({"event": "train", "loss": step_loss.item(), "lr": run.scheduler.get_last_lr()[0]})
                if state.step % eval_every == 0 or state.step == run.total_steps:
                    run_eval()
                if state.bad_steps_in_a_row >= cfg.max_bad_steps:
                    stop(f"{state.bad_steps_in_a_row} steps in a row had a NaN/Inf loss or gradient", "diverged")
                if state.stop_reason is None and state.step >= run.total_steps:
                    stop("reached the step budget", "completed")
                if state.stop_reason is None and (reason := should_stop(run)):
                    stop(reason, "budget_exhausted")
                run.signals.check()
                if state.stop_reason is None and state.bad_steps_in_a_row == 0:  # never checkpoint a bad streak
                    checkpoint("due")
                started, wait[0] = time.perf_counter(), 0.0  # eval and checkpoint time are not training time
                if state.stop_reason:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0

        if state.stop_reason is None:
            stop("finished all epochs", "completed")
    except Preempted as signal_name:
        # The last finished step is a consistent state: save it, then stop.
        stop(f"{signal_name} received", "preempted")
        checkpoint("preempted")
        return
    if state.status != "diverged":  # a diverged run keeps its last good checkpoint
        checkpoint("end")
    if cuts.on_fit_end(run):
        state.last_eval_step = -1  # the weights changed: the last evaluation no longer describes them
