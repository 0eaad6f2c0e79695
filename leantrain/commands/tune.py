"""`leantrain tune`: the cheapest recipe that reaches a target metric (Optuna search)."""
from __future__ import annotations


def register(subparsers) -> dict:
    parser = subparsers.add_parser(
        "tune", help="search the recipe's cost-relevant choices for the cheapest recipe that reaches a target",
        description="Searches LoRA rank and targets, frozen-prefix depth, learning rate, batch size and epochs (Optuna: "
                    "TPE sampler, successive-halving pruner on the evaluations), every trial a normal run in a fresh "
                    "process, skipped when the planner says it cannot fit the recipe's hardware. Writes DIR/best.yaml, "
                    "DIR/report.md, DIR/tune.json and DIR/cost_vs_metric.png; DIR/study.journal lets a killed search "
                    "resume (run the same command again).")
    parser.add_argument("recipe")
    parser.add_argument("--target", metavar="METRIC=VALUE",
                        help="e.g. accuracy=0.44: the cheapest recipe reaching it; without: the Pareto front of dollars vs metric")
    parser.add_argument("--metric", help="metric to trade against dollars without --target (default: accuracy, or loss "
                                         "for a causal LM)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-usd", type=float, metavar="X", help="stop the search once its trials cost this much")
    budget.add_argument("--budget-hours", type=float, metavar="H", help="stop the search after this many trial hours")
    parser.add_argument("--trials", type=int, default=12, metavar="N", help="finished trials to run (default 12)")
    parser.add_argument("--eval-every", type=int, metavar="N",
                        help="evaluate (and checkpoint) every N steps, for the pruner and the target (default: once per epoch)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value in every trial (repeatable)")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the trials, the study and the results go")
    return {"tune": _tune}


def _tune(args) -> int:
    from pathlib import Path

    from leantrain.ablate import parse_target
    from leantrain.errors import UserError
    from leantrain.recipe import load_recipe
    from leantrain.tune.search import TuneSettings, tune

    if args.trials < 1:
        raise UserError(f"tune --trials: must be at least 1, got {args.trials}")
    target = parse_target(args.target, "tune --target") if args.target else None
    recipe = load_recipe(args.recipe, args.overrides)
    metric = target[0] if target else args.metric or ("accuracy" if recipe.model.task == "sequence-classification" else "loss")
    settings = TuneSettings(recipe=args.recipe, output=Path(args.output), metric=metric,
                            target=target[1] if target else None, budget_usd=args.budget_usd,
                            budget_hours=args.budget_hours, trials=args.trials, eval_every=args.eval_every,
                            seed=args.seed, overrides=list(args.overrides))
    result = tune(settings)
    winner = result["winner"]
    print(f"search: {len(result['trials'])} trials, ${result['search_cost_usd']:.6f} ({result['search_hours'] * 3600:.0f} s)")
    if winner and target:
        print(f"winner: trial {winner['trial']} reached {metric}={winner['metric']:.4f} for "
              f"${winner['cost_to_target_usd']:.6f}: {' '.join(winner['sets'])}")
    elif winner:
        print(f"best on the Pareto front: trial {winner['trial']}, {metric}={winner['metric']:.4f}, ${winner['cost_usd']:.6f}")
    else:
        print(f"no trial reached {metric}={target[1]}; the closest are in {settings.output / 'report.md'}")
    print(f"recipe: {settings.output / 'best.yaml'}" if winner else "", f"report: {settings.output / 'report.md'}")
    return 0 if winner else 1
