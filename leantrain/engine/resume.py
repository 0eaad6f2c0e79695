"""When to checkpoint, and where a run resumes from.

``Checkpointer`` is what the loop calls after every step ("due"), on preemption and at
the end; it decides from the recipe's cadence (steps and/or minutes) whether to write.
``find_resume_point`` turns ``--resume auto|PATH`` into a validated checkpoint folder.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from leantrain.engine import checkpoint as ckpt
from leantrain.engine.snapshot import collect_snapshot, load_snapshot, write_snapshot
from leantrain.errors import UserError


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def warn(message: str) -> None:
    print(f"leantrain: {message}", file=sys.stderr, flush=True)


class Checkpointer:
    def __init__(self, run_dir: Path, train_cfg, run, cuts):
        self.root = checkpoint_root(run_dir)
        self.cfg, self.run, self.cuts = train_cfg, run, cuts
        self.last_time = time.monotonic()
        self.last_path: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.checkpoint_every or self.cfg.checkpoint_minutes)

    def due(self) -> bool:
        step = self.run.state.step
        if self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0:
            return True
        minutes = self.cfg.checkpoint_minutes
        if not minutes:
            return False
        # Clocks differ between ranks: all save when any rank's clock says so.
        return bool(self.run.parallel.max(int(time.monotonic() - self.last_time >= minutes * 60)))

    def __call__(self, why: str) -> None:
        """``why``: "due" (after a step), "preempted" (always saves) or "end"."""
        if why == "preempted" or (why == "end" and self.enabled) or (why == "due" and self.due()):
            self.save()

    def save(self) -> Path:
        """One checkpoint per step for all ranks: rank 0 writes the whole state (replicated
        under DDP, gathered from the shards under FSDP); the barriers make every rank reach this step before the write and wait
        until ``latest`` names the new checkpoint before going on (or exiting)."""
        step, parallel = self.run.state.step, self.run.parallel
        parallel.barrier()
        collected = collect_snapshot(self.run, self.cuts)  # under FSDP every rank gathers
        if parallel.is_main:
            self.last_path = ckpt.write_checkpoint(
                self.root, step, lambda folder: write_snapshot(folder, collected), keep=self.cfg.keep_checkpoints
            )
        else:
            self.last_path = self.root / f"{ckpt.PREFIX}{step:09d}"
        parallel.barrier()
        self.last_time = time.monotonic()
        self.run.log({"event": "checkpoint", "path": str(self.last_path)})
        return self.last_path


def find_resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None to start fresh. Damaged ones are skipped, loudly."""
    if not resume:
        return None
    if resume != "auto":
        folder = Path(resume)
        if not folder.is_dir():
            raise UserError(f"--resume: no checkpoint folder at {folder}")
        ckpt.validate(folder)
        return folder
    root = checkpoint_root(run_dir)
    found = ckpt.find_valid(root, warn) if root.is_dir() else None
    if found is None and root.is_dir() and any(ckpt.candidates(root)):
        raise UserError(f"--resume auto: every checkpoint in {root} is damaged; refusing to restart from step 0 "
                        "(move the folder away to start fresh)")
    if found is None:
        warn(f"--resume auto: no checkpoint in {root}; starting fresh")
    return found


def has_unfinished_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds checkpoints of a run that did not finish."""
    root = checkpoint_root(run_dir)
    if not root.is_dir() or not any(ckpt.candidates(root)):
        return False
    try:
        status = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["status"]
    except (OSError, ValueError, KeyError):
        return True
    return status not in ("completed", "early_stopped")


def resume_from(folder: Path, run, cuts, metrics_path: Path | None) -> None:
    """Load ``folder`` into the run and cut metrics.jsonl back to the checkpoint's step
    (``metrics_path`` None: another rank does that)."""
    load_snapshot(folder, run, cuts)
    # A checkpoint written on preemption carries that outcome; the resumed run starts over.
    run.state.status, run.state.stop_reason = "running", None
    step = run.state.step
    run.state.resumed_from.append(step)
    if run.state.order_micro_batches and run.state.order_micro_batches != run.micro_batches_per_step:
        resize_schedule(run)
    if metrics_path is not None and metrics_path.is_file():
        kept = []
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line torn by a kill mid-write
        metrics_path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    if run.parallel.is_main:
        warn(f"resuming from {folder} (step {step}, epoch {run.state.epoch})")


def resize_schedule(run) -> None:
    """Resumed on another number of ranks (elastic): a step now covers a different
    number of micro-batches, so the steps left change. Count them from the data cursor
    and stretch the schedule to the new total; the learning rate of the next step is
    the one the checkpoint recorded."""
    from leantrain.engine.session import make_scheduler

    state, cfg = run.state, run.train
    per_epoch, group = run.batches_per_epoch, run.micro_batches_per_step
    epochs_left = cfg.epochs - state.epoch
    if epochs_left < 1:  # a fractional last epoch
        steps = max(math.ceil((epochs_left * per_epoch - state.batch_in_epoch) / group), 0)
    else:
        steps = math.ceil((per_epoch - state.batch_in_epoch) / group)
        steps += math.ceil((epochs_left - 1) * math.ceil(per_epoch / group))
    run.total_steps = state.step + steps
    if cfg.max_steps:
        run.total_steps = min(run.total_steps, cfg.max_steps)
    saved = run.scheduler.state_dict()
    run.scheduler = make_scheduler(run.optimizer, cfg, run.total_steps)
    run.scheduler.load_state_dict(saved)
    for group_lr, lr in zip(run.optimizer.param_groups, run.scheduler.get_last_lr()):
        group_lr["lr"] = lr
