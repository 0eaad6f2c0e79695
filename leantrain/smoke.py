"""`leantrain smoke`: find in a minute the bug that would otherwise surface hours into a run.

Checks, in order, stopping at the first failure: the recipe validates; the data and
model load (columns, labels, tokenizer); one batch gives outputs of the right shape and a
finite loss; the real training loop, run for a few steps on that one batch, makes the
loss fall (a model that cannot overfit one batch will not learn, and an exploding
learning rate shows up here); a checkpoint saves and loads back bit for bit.
"""
from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from leantrain.errors import LeantrainError

OVERFIT_STEPS = 12


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    detail: str
    seconds: float


class SmokeFailure(LeantrainError):
    exit_code = 1


def _timed(name: str, fn: Callable[[], str], report: Callable[[Check], None]) -> None:
    started = time.perf_counter()
    try:
        detail = fn()
    except LeantrainError as exc:
        report(Check(name, False, str(exc), time.perf_counter() - started))
        raise  # already a one-line error (a user error keeps exit code 2)
    except AssertionError as exc:
        report(Check(name, False, str(exc), time.perf_counter() - started))
        raise SmokeFailure(f"smoke check '{name}' failed: {exc}") from None
    report(Check(name, True, detail, time.perf_counter() - started))


def _print_check(check: Check) -> None:
    mark = {True: "pass", False: "FAIL", None: "skip"}[check.passed]
    print(f"  [{mark}] {check.name:<22} {check.detail} ({check.seconds:.1f}s)", flush=True)


def run_smoke(recipe_path, overrides: list[str] | None = None, report: Callable[[Check], None] = _print_check) -> list[Check]:
    """Run every check; raises SmokeFailure (one line) at the first that fails."""
    from leantrain.engine.checkpoint import write_checkpoint
    from leantrain.engine.loop import fit, move_to_device
    from leantrain.engine.session import build_session
    from leantrain.engine.snapshot import load_snapshot, model_state, save_snapshot
    from leantrain.recipe import load_recipe

    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        report(check)

    tmp = Path(tempfile.mkdtemp(prefix="leantrain-smoke-"))
    smoke_overrides = list(overrides or []) + [
        f"output.dir={tmp / 'run'}", "train.log_every=1", f"train.max_steps={OVERFIT_STEPS}",
        f"train.eval_every={10**9}", "train.checkpoint_every=null", "train.checkpoint_minutes=null",
        "train.warmup_ratio=0", "train.schedule=constant", "budget.max_usd=null", "budget.max_hours=null",
    ]
    state: dict = {}

    def check_recipe() -> str:
        state["recipe"] = load_recipe(recipe_path, smoke_overrides)
        return f"{recipe_path} is valid"

    def check_data_and_model() -> str:
        session = state["session"] = build_session(state["recipe"])
        n_train, n_eval = len(session.train_examples), len(session.eval_examples)
        assert n_train > 0, "no training examples"
        return f"{n_train} train / {n_eval} eval examples, cuts: {', '.join(session.cuts.names()) or 'none'}"

    def check_shapes() -> str:
        session = state["session"]
        run = session.run
        indices, batch = next(iter(session.batches_from(0, 0)))
        state["batch"] = (indices, batch)  # what the loop trains on: (example indices, batch)
        with torch.no_grad(), session.cuts.forward_context(run):
            loss = session.task.loss_sum(run.model, move_to_device(batch, run.device)) / session.task.count(batch)
        assert math.isfinite(loss.item()), f"the first loss is {loss.item()} (check the data and the model)"
        shape = f"batch {tuple(batch['input_ids'].shape)}, " if isinstance(batch, Mapping) and "input_ids" in batch else ""
        return f"{shape}initial loss {loss.item():.4f}"

    def check_overfit() -> str:
        session = state["session"]
        run, batch = session.run, state["batch"]
        losses: list[float] = []
        run.log = lambda event: losses.append(event["loss"]) if event.get("event") in ("train", "skipped_step") else None
        group = [batch] * run.micro_batches_per_rank
        fit(run, session.cuts, session.task, lambda epoch, start: group * OVERFIT_STEPS, lambda: {}, OVERFIT_STEPS)
        bad = [i for i, x in enumerate(losses) if not math.isfinite(x)]
        lr = state["recipe"].train.lr
        assert not bad, f"loss became {losses[bad[0]]} at step {bad[0] + 1} (train.lr={lr} too high?)"
        assert losses[-1] < losses[0], (
            f"loss did not fall while overfitting one batch: {losses[0]:.4f} -> {losses[-1]:.4f} "
            f"(train.lr={lr} too high or too low?)")
        return f"{OVERFIT_STEPS} steps on one batch: loss {losses[0]:.4f} -> {losses[-1]:.4f}"

    def check_checkpoint() -> str:
        session = state["session"]
        run, cuts = session.run, session.cuts
        before = {k: v.detach().clone() for k, v in model_state(run.model).items()}
        folder = write_checkpoint(tmp / "checkpoints", run.state.step, lambda f: save_snapshot(f, run, cuts))
        with torch.no_grad():
            for value in model_state(run.model).values():
                if value.is_floating_point():
                    value.add_(1.0)
        load_snapshot(folder, run, cuts)
        after = model_state(run.model)
        assert all(torch.equal(before[k], after[k]) for k in before), "weights differ after a checkpoint round trip"
        size = sum(p.stat().st_size for p in folder.iterdir())
        return f"saved and restored bit for bit ({size / 1e6:.1f} MB)"

    try:
        _timed("recipe", check_recipe, record)
        _timed("data and model", check_data_and_model, record)
        _timed("shapes and finite loss", check_shapes, record)
        _timed("overfit one batch", check_overfit, record)
        _timed("checkpoint round trip", check_checkpoint, record)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return checks
