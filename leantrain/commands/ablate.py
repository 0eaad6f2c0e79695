"""`leantrain ablate`: the ladder of cut configurations, each in a fresh process."""
from __future__ import annotations


def register(subparsers) -> dict:
    parser = subparsers.add_parser(
        "ablate", help="measure what each cut saves: a baseline, the cuts added one at a time, and each alone",
        description="Runs a baseline (full fine-tune, fp32, no cuts), then the recipe's cuts added one at a time, "
                    "then each cut alone, every rung in a fresh process; writes DIR/ablation.json and DIR/report.html.")
    parser.add_argument("recipe")
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument("--steps", type=int, metavar="N", help="train every rung for N optimizer steps and compare")
    goal.add_argument("--to-metric", metavar="METRIC=VALUE",
                      help="train every rung (up to the recipe's budget) until an evaluation reaches VALUE, e.g. accuracy=0.8")
    price = parser.add_mutually_exclusive_group()
    price.add_argument("--price-per-hour", type=float, metavar="USD", help="dollars per hour for the cost figures")
    price.add_argument("--gpu", metavar="NAME", help="price the runs at this catalog accelerator's hourly price")
    parser.add_argument("--spot", action="store_true", help="with --gpu: use the spot price")
    parser.add_argument("--cuts", metavar="CUT[=VALUE],...",
                        help="cuts to layer, in order (`bucketing` = train.bucket_by_length, `packing` = data.pack); "
                             "default: the recipe's cuts (bucketing and packing when it turns them on) plus gradient_checkpointing")
    parser.add_argument("--no-alone", action="store_true", help="skip the rungs with each cut alone")
    parser.add_argument("--from-scratch", action="store_true", help="also run the baseline from random init")
    parser.add_argument("--full-lr", type=float, metavar="LR",
                        help="learning rate of rungs without LoRA when the recipe uses LoRA (default 5e-5)")
    parser.add_argument("--eval-every", type=int, default=10, metavar="N",
                        help="with --to-metric: evaluate every N steps (default 10)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value in every rung (repeatable)")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the rungs' runs and the results go")
    parser.add_argument("--resume", action="store_true",
                        help="reuse rungs whose run directory in DIR already holds exactly that run, finished")
    parser.add_argument("--only", metavar="N,...", help="run only these rungs (numbers as --dry-run lists them)")
    parser.add_argument("--dry-run", action="store_true", help="print the rungs and their overrides, run nothing")
    return {"ablate": _ablate}


def _ablate(args) -> int:
    from pathlib import Path

    from leantrain.ablate import AblationSettings, describe_ladder, parse_target, plan_ladder, run_ablation
    from leantrain.errors import UserError
    from leantrain.recipe import load_recipe
    from leantrain.report.tables import ablation_table, markdown_table

    if args.steps is not None and args.steps < 1:
        raise UserError(f"ablate --steps: must be a positive number of steps, got {args.steps}")
    settings = AblationSettings(
        recipe=args.recipe, output=Path(args.output), steps=args.steps,
        target=parse_target(args.to_metric) if args.to_metric else None,
        price_per_hour=args.price_per_hour, gpu=args.gpu, spot=args.spot,
        cuts=[c for c in args.cuts.split(",") if c.strip()] if args.cuts else None,
        alone=not args.no_alone, from_scratch=args.from_scratch, full_lr=args.full_lr,
        eval_every=args.eval_every, overrides=tuple(args.overrides), resume=args.resume, only=_numbers(args.only),
    )
    if args.dry_run:
        recipe = load_recipe(args.recipe, args.overrides)
        kwargs = {"full_lr": args.full_lr} if args.full_lr else {}
        rungs = plan_ladder(recipe, settings.cuts, settings.alone, settings.from_scratch, **kwargs)
        print("\n".join(f"{i:>2}. {line.strip()}" for i, line in enumerate(describe_ladder(rungs).splitlines(), 1)))
        return 0
    ablation = run_ablation(settings)
    print(markdown_table(*ablation_table(ablation)))
    print(f"\n{len(ablation['rungs'])} rungs in {ablation['total_seconds']:.0f} s at ${ablation['price_per_hour']}/h "
          f"({ablation['price_source']}); results: {args.output}/ablation.json, report: {args.output}/report.html")
    return 1 if any(r.get("status") == "failed" for r in ablation["rungs"]) else 0


def _numbers(text: str | None) -> list[int] | None:
    from leantrain.errors import UserError

    if not text:
        return None
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise UserError(f"ablate --only: expected rung numbers such as 1,3, got {text!r}") from None
