"""One run, wired from a recipe: build the session, resume if asked, fit, write outputs.

``train()`` is the public API behind ``leantrain train``. It also takes a plain
``torch.nn.Module`` with a loss function and datasets, so the cuts are usable without
Hugging Face models.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from leantrain.engine.context import RunContext
from leantrain.engine.distributed import Parallel
from leantrain.engine.loop import fit
from leantrain.engine.model_card import write_model_cards
from leantrain.engine.outputs import save_model, write_summary
from leantrain.engine.resume import Checkpointer, checkpoint_root, find_resume_point, has_unfinished_run, resume_from
from leantrain.engine.session import build_session
from leantrain.engine.signals import Preempted, StopSignals
from leantrain.errors import UserError
from leantrain.observe.memory import peak_memory, reset_peak
from leantrain.observe.metrics import MetricsLog
from leantrain.plan.catalog import resolve_price
from leantrain.plan.ledger import find_ledger
from leantrain.observe.sinks import open_sinks
from leantrain.recipe import Recipe, apply_overrides, load_recipe, parse_recipe


@dataclass
class RunResult:
    summary: dict
    run_dir: Path
    model: torch.nn.Module | None


def as_recipe(recipe: Recipe | str | os.PathLike | dict, overrides: list[str] | None = None) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(apply_overrides(recipe, overrides or []), "<dict>", overrides=overrides)
    return load_recipe(recipe, overrides)


def budget_guard(recipe: Recipe) -> Callable[[RunContext], str | None]:
    """Stop when the budget is spent; warn once, early, when the projection exceeds it."""
    budget = recipe.budget
    price_per_device = resolve_price(recipe.hardware)[0]
    warned = False

    def check(run: RunContext) -> str | None:
        nonlocal warned
        hours = run.state.train_seconds / 3600
        price = price_per_device * run.world_size  # every device is billed
        if budget.max_hours is not None and hours >= budget.max_hours:
            return f"budget.max_hours={budget.max_hours} reached"
        if budget.max_usd is not None and hours * price >= budget.max_usd:
            return f"budget.max_usd={budget.max_usd} reached"
        if not warned and run.state.step >= 5:
            projected = hours / run.state.step * run.total_steps
            over = []
            if budget.max_hours is not None and projected > budget.max_hours:
                over.append(f"budget.max_hours={budget.max_hours}")
            if budget.max_usd is not None and projected * price > budget.max_usd:
                over.append(f"budget.max_usd={budget.max_usd}")
            if over:
                warned = True
                message = (f"projected {projected:.3f} h (${projected * price:.4f}) for the whole run exceeds "
                           f"{' and '.join(over)}; the run will stop there")
                run.log({"event": "budget_warning", "message": message})
                print(f"leantrain: warning: {message}", file=sys.stderr, flush=True)
        return None

    return check


def _prepare_run_dir(run_dir: Path, recipe: Recipe, resume: str | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and has_unfinished_run(run_dir):
        raise UserError(f"{run_dir} holds checkpoints of an unfinished run: pass --resume auto to continue it, "
                        "or choose another output.dir")
    if not resume and checkpoint_root(run_dir).is_dir():
        # A finished run's checkpoints: a fresh run must not mix its own with them.
        shutil.rmtree(checkpoint_root(run_dir))
    (run_dir / "config.yaml").write_text(recipe.to_run_yaml(), encoding="utf-8")


def train(
    recipe: Recipe | str | os.PathLike | dict,
    *,
    overrides: list[str] | None = None,
    resume: str | None = None,
    model: torch.nn.Module | None = None,
    loss_fn: Callable | None = None,
    train_data: Sequence | None = None,
    eval_data: Sequence | None = None,
    collate_fn: Callable | None = None,
    metric_fn: Callable | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Train as the recipe says and write the run directory; returns the summary.

    ``resume``: None (fresh), "auto" (newest valid checkpoint of the run directory, or
    fresh if there is none) or a checkpoint folder. Pass ``model`` + ``loss_fn`` +
    ``train_data`` (any indexable dataset) to train your own ``torch.nn.Module``; the
    recipe's ``model`` and ``data`` sections are then ignored.
    """
    recipe = as_recipe(recipe, overrides)
    parallel = Parallel.from_env()  # a torchrun rank, or one process (no process group)
    try:
        return _train(recipe, parallel, resume, show_progress, dict(
            model=model, loss_fn=loss_fn, train_data=train_data, eval_data=eval_data, collate_fn=collate_fn,
            metric_fn=metric_fn))
    finally:
        parallel.close()


class _NoLog:
    """What ranks other than 0 log to: rank 0 writes the run's metrics alone."""

    def write(self, event: dict, state) -> None:
        pass

    def close(self) -> None:
        pass


def _agreed(parallel: Parallel, guard: Callable[[RunContext], str | None]) -> Callable[[RunContext], str | None]:
    """A budget guard all ranks obey together: their clocks differ by a little, and a
    rank that stopped alone would leave the others waiting in the next all-reduce."""
    if not parallel.enabled:
        return guard

    def check(run: RunContext) -> str | None:
        reason = guard(run)
        return reason or ("the budget was reached (on another rank)" if parallel.max(int(reason is not None)) else None)

    return check


def _train(recipe: Recipe, parallel: Parallel, resume: str | None, show_progress: bool, user_parts: dict) -> RunResult:
    run_dir = recipe.run_dir()
    if parallel.is_main:
        _prepare_run_dir(run_dir, recipe, resume)
    parallel.barrier()  # the run directory is ready before any rank reads it
    with StopSignals() as signals:
        prepare_started = time.perf_counter()
        try:
            session = build_session(recipe, check=signals.check, parallel=parallel, **user_parts)
        except Preempted as signal_name:
            return RunResult(_preempted_before_training(run_dir, str(signal_name), parallel.is_main), run_dir, None)
        run, cuts = session.run, session.cuts
        run.signals = signals
        if parallel.enabled:
            signals.agree = parallel.max  # a signal to any rank stops every rank at the same step
        prepare_seconds = time.perf_counter() - prepare_started
        data_stats = dict(session.data_info.stats) if session.data_info else {"rows_in": len(session.train_examples)}

        metrics_path = run_dir / "metrics.jsonl"
        resume_point = find_resume_point(run_dir, resume)
        parallel.barrier()  # every rank found the checkpoint before rank 0 edits metrics.jsonl
        if resume_point is not None:
            resume_from(resume_point, run, cuts, metrics_path if parallel.is_main else None)
        elif parallel.is_main:
            metrics_path.unlink(missing_ok=True)
        log = (MetricsLog(metrics_path, run.total_steps, show_progress, sinks=open_sinks(recipe, run_dir))
               if parallel.is_main else _NoLog())
        ledger = find_ledger(cuts)  # adds cost, MFU and utilization to every train line
        run.log = lambda event: log.write(ledger.annotate(event, run) if ledger else event, run.state)
        checkpointer = Checkpointer(run_dir, recipe.train, run, cuts)
        reset_peak(run.device)
        budget_set = recipe.budget.max_usd is not None or recipe.budget.max_hours is not None

        def summarize(final_eval: dict, saved: dict) -> dict:
            padded = session.padded_token_fraction()
            data_stats["padded_token_fraction"] = round(padded, 4) if padded is not None else None
            return write_summary(run_dir, recipe, run, cuts, final_eval, saved, prepare_seconds,
                                 peak_memory(run.device, run.extras), signals.name, data_stats)

        try:
            signals.check()  # a signal during data preparation: stop before training
            if recipe.train.eval_at_start and resume_point is None:
                run.extras["eval_at_start"] = session.evaluate()
                run.log({"event": "eval_at_start", **run.extras["eval_at_start"]})
            fit(run, cuts, session.task, session.batches_from, session.evaluate, session.steps_per_epoch,
                checkpointer, _agreed(parallel, budget_guard(recipe)) if budget_set else budget_guard(recipe))
            state = run.state
            final_eval = state.last_eval
            if state.status not in ("preempted", "diverged"):
                # Reuse the last evaluation when it was of exactly these weights.
                if state.last_eval_step != state.step:
                    final_eval = session.evaluate()
                log.write({"event": "final_eval", **final_eval}, state)
        except Preempted as signal_name:
            run.state.status, run.state.stop_reason = "preempted", f"{signal_name} received"
            summary = summarize({}, {})
            parallel.barrier()  # leave together: torchrun stops the other ranks when one exits
            return RunResult(summary=summary, run_dir=run_dir, model=run.model)
        except BaseException as exc:
            run.state.status = "failed"
            run.state.stop_reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            summarize({}, {})
            raise
        finally:
            log.close()

        saved = {}
        if recipe.output.save_model and run.state.status != "preempted":
            whole = parallel.full_state_dict(run.model)  # FSDP: every rank helps gather the shards
            if parallel.is_main:
                saved = save_model(run_dir, recipe, run.model, session.tokenizer, session.data_info, cuts, run, whole)
        if checkpointer.last_path is not None:
            saved["checkpoint"] = str(checkpointer.last_path)
        summary = summarize(final_eval, saved)
        if parallel.is_main and session.data_info is not None:  # a recipe model: card it
            write_model_cards(summary, recipe, session.data_info.label_names)
        parallel.barrier()  # leave together: torchrun stops the other ranks when one exits
        return RunResult(summary=summary, run_dir=run_dir, model=run.model)


def _preempted_before_training(run_dir: Path, signal_name: str, write: bool = True) -> dict:
    """Summary of a run stopped during data preparation: nothing trained, nothing to save."""
    summary = {"status": "preempted", "stop_reason": f"{signal_name} received during data preparation",
               "signal": signal_name, "steps": 0, "train_seconds": 0.0, "cost_usd": 0.0, "eval": {}}
    if write:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def describe_result(summary: dict) -> str:
    """One human line for the end of a run."""
    ev = summary.get("eval", {})
    parts = [f"status={summary['status']}", f"steps={summary['steps']}", f"{summary['train_seconds']:.1f}s"]
    if "accuracy" in ev:
        parts.append(f"accuracy={ev['accuracy']:.3f} (majority class {ev.get('majority_class_accuracy', float('nan')):.3f})")
    if "perplexity" in ev:
        parts.append(f"perplexity={ev['perplexity']:.2f}")
    parts.append(f"cost=${summary['cost_usd']:.4f}")
    if summary.get("stop_reason") and summary["status"] != "completed":
        parts.append(f"({summary['stop_reason']})")
    return " ".join(parts)
