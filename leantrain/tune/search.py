"""`leantrain tune`: the cheapest recipe that reaches a target, found by Optuna.

Why Optuna: its TPE sampler learns which choices pay from the finished trials, its
successive-halving pruner stops trials whose intermediate evaluations trail the others,
and its journal storage (an append-only file) survives a SIGKILL of the search. What is
leantrain's: the search space (space.py), each trial as a normal run (trial.py), the
planner's fit check before a trial, and the dollars of every trial.

With a target the study minimises the dollars to reach it (a trial stops at the first
evaluation that meets it; one that never does scores behind every one that did). Without
a target it is a two-objective study (dollars, metric) and the result is its Pareto front.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from leantrain.ablate.runner import higher_is_better
from leantrain.errors import UserError
from leantrain.recipe import load_recipe
from leantrain.tune.space import space_for, suggest
from leantrain.tune.trial import TrialOutcome, finished_outcome, run_trial

UNREACHED = 1e6  # the objective of a trial that missed the target: behind every one that met it
STUDY = "leantrain-tune"


@dataclass
class TuneSettings:
    recipe: str
    output: Path
    metric: str
    target: float | None = None
    budget_usd: float | None = None
    budget_hours: float | None = None
    trials: int = 12
    eval_every: int | None = None
    seed: int = 0
    overrides: list[str] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)


def _study(settings: TuneSettings):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(settings.output / "study.journal")))
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=4)
    if settings.target is not None:
        return optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True, direction="minimize",
                                   sampler=sampler, pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    directions = ["minimize", "maximize" if settings.higher_is_better else "minimize"]
    return optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True, directions=directions,
                               sampler=sampler)


def _requeue_interrupted(study) -> int:
    """Trials a killed search left running: closed as failed and queued again with the
    same values, so they resume from their own checkpoint (same run directory)."""
    from optuna.trial import TrialState

    interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in interrupted:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"resumed_from_trial": trial.number})
    return len(interrupted)


def _run_dir(settings: TuneSettings, sets: list[str]) -> Path:
    key = hashlib.sha256(json.dumps(sets).encode()).hexdigest()[:10]
    return settings.output / "trials" / key


def fits(recipe) -> str | None:
    """Why the planner says this recipe's step cannot fit the recipe's hardware, or None."""
    from leantrain.plan.planner import plan

    try:
        found = plan(recipe, gpus=[recipe.hardware.name], recommend=False)
    except UserError:
        return None  # the planner cannot size it (no catalog entry, unknown data): run it and see
    row = next((g for g in found["gpus"] if g["name"] == found["target"]), None)
    if row is None or row["fits"]:
        return None
    return f"planned peak {row['peak_memory_bytes'] / 1e9:.1f} GB > {row['memory_bytes'] / 1e9:.1f} GB of {row['name']}"


def _price(recipe) -> float:
    from leantrain.plan.catalog import resolve_price

    return resolve_price(recipe.hardware)[0]


def spent(study) -> tuple[float, float]:
    """Dollars and hours billed by the finished trials."""
    usd = sum(t.user_attrs.get("cost_usd", 0.0) for t in study.get_trials(deepcopy=False))
    hours = sum(t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False)) / 3600
    return usd, hours


def _budget_left(settings: TuneSettings, study, price: float) -> float | None:
    """Dollars left to the search (None: no budget), an hours budget priced at ``price``."""
    usd, hours = spent(study)
    left = [b - usd for b in [settings.budget_usd] if b is not None]
    left += [(b - hours) * price for b in [settings.budget_hours] if b is not None]
    return min(left) if left else None


def _trial_sets(settings: TuneSettings, sets: list[str], run_dir: Path, price: float, left: float | None) -> list[str]:
    every = [f"output.dir={run_dir}", "output.save_model=false", f"hardware.price_per_hour={price}"]
    if settings.eval_every:  # evaluations (and checkpoints) often enough for the pruner and the target
        every += [f"train.eval_every={settings.eval_every}", f"train.checkpoint_every={settings.eval_every}"]
    if left is not None:
        every.append(f"budget.max_usd={max(left, 1e-9)}")
    return every + list(settings.overrides) + sets


def _record(trial, outcome: TrialOutcome, sets: list[str], run_dir: Path, price: float, settings: TuneSettings) -> list:
    """Store the trial's figures on it and return its objective value(s)."""
    cost = round(outcome.seconds * price / 3600, 8)
    final = outcome.summary.get("eval", {}).get(settings.metric)
    value = outcome.hit[settings.metric] if outcome.hit else (final if final is not None else
                                                               (outcome.evals[-1][settings.metric] if outcome.evals else None))
    attrs = {"sets": sets, "run_dir": str(run_dir), "status": outcome.status, "seconds": round(outcome.seconds, 3),
             "cost_usd": cost, "metric": value, "evals": len(outcome.evals),
             "steps": outcome.hit["step"] if outcome.hit else outcome.summary.get("steps")}
    if outcome.hit:  # dollars from the first step to the evaluation that met the target
        attrs["cost_to_target_usd"] = round(outcome.hit["wall_seconds"] * price / 3600, 8)
        attrs["seconds_to_target"] = outcome.hit["wall_seconds"]
    if outcome.error:
        attrs["error"] = outcome.error
    for key, item in attrs.items():
        trial.set_user_attr(key, item)
    if settings.target is None:
        return [cost, value]
    if outcome.hit:
        return [attrs["cost_to_target_usd"]]
    shortfall = abs(settings.target - value) if value is not None else 1.0
    return [UNREACHED + shortfall]


def tune(settings: TuneSettings, echo=print) -> dict:
    """Run (or resume) the search; write the winner and the report; return the results."""
    from optuna.trial import TrialState

    from leantrain.tune.report import write_results

    settings.output.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(settings.recipe, settings.overrides)
    space, price = space_for(recipe), _price(recipe)
    study = _study(settings)
    if (resumed := _requeue_interrupted(study)):
        echo(f"resuming: {resumed} interrupted trial(s) continue from their checkpoints", flush=True)
    done = lambda: len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))  # noqa: E731
    while done() < settings.trials:
        left = _budget_left(settings, study, price)
        if left is not None and left <= 0:
            echo("the search budget is spent", flush=True)
            break
        trial = study.ask()
        sets = suggest(trial, space)
        run_dir = _run_dir(settings, sets)
        trial_recipe = load_recipe(settings.recipe, settings.overrides + sets)
        if (why := fits(trial_recipe)):
            trial.set_user_attr("status", "skipped")
            trial.set_user_attr("skipped", why)
            study.tell(trial, state=TrialState.PRUNED)
            echo(f"[trial {trial.number}] skipped, {why}: {' '.join(sets)}", flush=True)
            continue
        echo(f"[trial {trial.number}] {' '.join(sets)}", flush=True)
        higher = settings.higher_is_better

        def on_eval(line: dict, trial=trial) -> bool:
            if settings.target is None:
                return False  # Optuna prunes single-objective studies only
            trial.report(-line[settings.metric] if higher else line[settings.metric], line["step"])
            return trial.should_prune()

        outcome = finished_outcome(run_dir)
        if outcome is not None:
            outcome.seconds = 0.0  # the same values as an earlier trial: its result, no second bill
            trial.set_user_attr("duplicate", True)
        else:
            outcome = run_trial(settings.recipe, _trial_sets(settings, sets, run_dir, price, left), run_dir,
                                settings.metric, settings.target, on_eval)
        values = _record(trial, outcome, sets, run_dir, price, settings)
        if outcome.status == "failed" or values[-1] is None:
            study.tell(trial, state=TrialState.FAIL)
        elif outcome.status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, values if len(values) > 1 else values[0])
        attrs = study.trials[trial.number].user_attrs
        echo(f"  {outcome.status}: {settings.metric}={attrs.get('metric')} ${attrs['cost_usd']:.6f} "
             f"({attrs['seconds']:.1f} s){' ' + outcome.error if outcome.error else ''}", flush=True)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError("tune: no trial finished; see the trials' tune.log files in " + str(settings.output / "trials"))
    return write_results(settings, study, space, price)
