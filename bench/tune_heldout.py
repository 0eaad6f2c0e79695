"""`leantrain tune` on held-out data, with the Trainer's accuracy as the target.

    python bench/tune_heldout.py [--sets debian-sections docstrings] [--trials 8]

Reads bench/results/plain-recipe.json (run bench/plain_recipe.py first) for each set's
Trainer + PEFT figures: its median accuracy is the target, its median training time the
dollars to beat (x the recipe's price), its median whole process the cost of one Trainer
run. Runs `leantrain tune PLAIN_RECIPE --target accuracy=<Trainer's>` and writes
bench/results/tune-heldout.json: the winner's recipe, its dollars to the target against
the Trainer's, and the search's own dollars in Trainer runs. Then the returned recipe
(best.yaml, which stops at the target) is run as a user would, in a fresh process, and its
whole process and training time are set against the Trainer's: the like-for-like figures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.plain_recipe import RESULTS, plain_recipe, time_leantrain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["debian-sections", "docstrings"])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=20)
    args = parser.parse_args()
    plain = json.loads((RESULTS / "plain-recipe.json").read_text())
    from leantrain.recipe import load_recipe
    from leantrain.plan.catalog import resolve_price

    results = {"trials": args.trials, "sets": {}}
    for data_set in args.sets:
        trainer = plain["sets"][data_set]["median"]["trainer"]
        work = Path(tempfile.mkdtemp(prefix=f"tune-{data_set}-"))
        recipe = plain_recipe(data_set, work)
        price = resolve_price(load_recipe(recipe).hardware)[0]
        out = work / "tune"
        cmd = [str(Path(sys.executable).parent / "leantrain"), "tune", str(recipe), "--target",
               f"accuracy={trainer['accuracy']:.4f}", "--trials", str(args.trials), "--eval-every", str(args.eval_every),
               "--output", str(out)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
        found = json.loads((out / "tune.json").read_text())
        trainer_usd = trainer["train_seconds"] * price / 3600
        trainer_run_usd = trainer["wall_seconds"] * price / 3600
        winner = found["winner"]
        rerun = time_leantrain(out / "best.yaml", work / "rerun", f"best.yaml of {data_set}") if winner else None
        results["sets"][data_set] = {
            "target_accuracy": round(trainer["accuracy"], 4), "price_per_hour": price,
            "trainer_train_usd": round(trainer_usd, 8), "trainer_run_usd": round(trainer_run_usd, 8),
            "winner": winner, "best_yaml": (out / "best.yaml").read_text() if winner else None,
            "winner_usd_over_trainer": round(winner["cost_to_target_usd"] / trainer_usd, 3) if winner else None,
            "search_usd": found["search_cost_usd"],
            "rerun": rerun,
            "rerun_whole_process_over_trainer": round(rerun["wall_seconds"] / trainer["wall_seconds"], 3) if rerun else None,
            "rerun_train_seconds_over_trainer": round(rerun["train_seconds"] / trainer["train_seconds"], 3) if rerun else None,
            "search_in_trainer_runs": round(found["search_cost_usd"] / trainer_run_usd, 2),
            "trials": [{k: r[k] for k in ("trial", "status", "metric", "cost_usd", "cost_to_target_usd", "sets")}
                       for r in found["trials"]],
        }
        print(json.dumps({k: v for k, v in results["sets"][data_set].items() if k not in ("trials", "best_yaml")}),
              flush=True)
    (RESULTS / "tune-heldout.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS / 'tune-heldout.json'}")


if __name__ == "__main__":
    main()
