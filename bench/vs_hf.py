"""leantrain against Hugging Face Trainer + PEFT and a hand-written loop, side by side.

Every contender runs in a fresh process (bench/contenders.py); runs alternate, round
after round, in a rotated order so that a slow spell of this shared machine hits every
contender alike, and the tables show medians and the median of the per-round ratios.
Phases (each writes bench/results/<phase>.json; docs/benchmarks.md is then re-rendered
from every result file present, see bench/report.py):

  speed     the demo recipe for ``--steps`` optimizer steps: leantrain, HF best, HF
            tutorial, hand-written loop; wall time, samples/s, peak RSS, accountant
  accuracy  the whole demo recipe (all epochs) once per contender: final accuracy
  fullft    full fine-tune fp32 vs the demo recipe: time and dollars to a target accuracy
  mfu       FLOPs of a demo step (FlopCounterMode) against a measured matmul peak

    python bench/vs_hf.py --phases speed mfu --steps 20 --rounds 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SPEED_CONTENDERS = ["leantrain", "hf-best", "hf-tutorial", "hand", "leantrain-native-dropout"]
# The full fine-tune baselines. "no-cuts" is `leantrain ablate`'s baseline rung for the
# demo recipe (fp32, every weight at the usual full-FT rate, every cost cut off, length
# bucketing and the fast dropout kernel included), derived so a cut added to the recipe
# is turned off here too; "data-cuts" keeps those two on.
DATA_CUTS_OFF = ("train.bucket_by_length=false", "cuts.fast_dropout=false")
FULLFT_BASELINES = ("data-cuts", "no-cuts")


def full_fine_tune(recipe, baseline: str) -> list[str]:
    from leantrain.ablate.ladder import plan_ladder

    overrides = plan_ladder(recipe, alone=False)[0].overrides
    return overrides if baseline == "no-cuts" else [o for o in overrides if o not in DATA_CUTS_OFF]


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    packages = {}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "leantrain"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "absent"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags, "python": platform.python_version(),
            "packages": packages, "commit": commit}


def contender(name: str, opts: dict) -> dict:
    """Run one contender in a fresh process; its figures plus the process wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "contenders.py"), name, json.dumps(opts)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = round(wall, 3)
    print(f"  {name}: {json.dumps({k: v for k, v in figures.items() if k != 'evals'})}", flush=True)
    return figures


def alternate(names: list[str], opts: dict, rounds: int) -> list[dict]:
    """``rounds`` rounds; round r runs the contenders rotated by r (fair to each position)."""
    results = []
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        print(f"round {r + 1}/{rounds}: {', '.join(order)}", flush=True)
        results.append({n: contender(n, opts) for n in order})
    return results


def medians(rounds: list[dict], baseline: str) -> dict:
    """Per contender: medians of its figures and the median of its per-round ratios
    against ``baseline`` (time ratio = contender / baseline, so > 1 means slower)."""
    out = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and v is not None]
        med = {k: statistics.median(run[k] for run in runs) for k in keys if all(run.get(k) is not None for run in runs)}
        for key in ("wall_seconds", "train_seconds"):
            med[f"{key}_ratio_vs_{baseline}"] = statistics.median(r[name][key] / r[baseline][key] for r in rounds)
        med["per_step_seconds"] = statistics.median(run["train_seconds"] / run["steps"] for run in runs)
        med["per_step_ratio_vs_" + baseline] = statistics.median(
            (r[name]["train_seconds"] / r[name]["steps"]) / (r[baseline]["train_seconds"] / r[baseline]["steps"]) for r in rounds)
        out[name] = med
    return out


def thread_sets(threads: int | None) -> list[str]:
    return [f"train.threads={threads}"] if threads else []


def phase_speed(args) -> dict:
    opts = {"max_steps": args.steps, "sets": thread_sets(args.threads)}
    rounds = alternate(args.contenders, opts, args.rounds)
    return {"steps": args.steps, "rounds": rounds, "medians": medians(rounds, "leantrain")}


def phase_accuracy(args) -> dict:
    """The whole recipe once per contender (accuracy is a property of the run, not of the
    machine's load; its wall times are reported but the speed phase gives the ratios)."""
    opts = {"sets": thread_sets(args.threads), **({"epochs": args.epochs} if args.epochs else {})}
    return {"epochs": args.epochs, "runs": {n: contender(n, opts) for n in args.accuracy_contenders}}


def time_to_target(run: dict, target: float) -> dict:
    """First evaluation at or above ``target``: its step, and the training time spent
    up to it (evaluation time is not training time). Read from the run's own clock at
    that evaluation, so work front-loaded into early steps (a cache filled in the first
    epoch) is charged where it happened."""
    hit = next((e for e in run["evals"] if e["accuracy"] >= target), None)
    return {"reached": hit is not None, "step": hit["step"] if hit else None,
            "train_seconds": hit["train_seconds"] if hit else None, "best_accuracy": max(e["accuracy"] for e in run["evals"])}


def phase_fullft(args) -> dict:
    """Full fine-tune fp32 and the demo recipe, both evaluated every ``--eval-every`` steps,
    alternated over ``--fullft-rounds`` rounds. Target: the full fine-tune's final accuracy
    minus one point (the acceptance criterion's tolerance)."""
    from leantrain.engine.run import as_recipe

    recipe = as_recipe(str(REPO / "examples" / "demo.yaml"))
    price, baseline = recipe.hardware.price_per_hour, full_fine_tune(recipe, args.fullft_baseline)
    base = {"eval_every": args.eval_every, **({"epochs": args.epochs} if args.epochs else {})}
    configs = {"full fine-tune fp32": baseline + thread_sets(args.threads),
               "demo recipe": thread_sets(args.threads)}
    rounds = []
    for r in range(args.fullft_rounds):
        order = list(configs) if r % 2 == 0 else list(configs)[::-1]
        print(f"fullft round {r + 1}/{args.fullft_rounds}: {', '.join(order)}", flush=True)
        rounds.append({name: contender("leantrain", {**base, "sets": configs[name]}) for name in order})
    per_round = []
    for runs in rounds:
        full, demo = runs["full fine-tune fp32"], runs["demo recipe"]
        target = full["accuracy"] - 0.01
        reach = {name: time_to_target(run, target) for name, run in runs.items()}
        for item in reach.values():
            item["usd"] = price * item["train_seconds"] / 3600 if item["reached"] else None
        ratio = (reach["demo recipe"]["usd"] / reach["full fine-tune fp32"]["usd"]
                 if reach["demo recipe"]["reached"] and reach["full fine-tune fp32"]["usd"] else None)
        per_round.append({"target_accuracy": target, "reach": reach, "demo_dollar_fraction": ratio,
                          "final_accuracy": {n: run["accuracy"] for n, run in runs.items()},
                          "total_train_seconds": {n: run["train_seconds"] for n, run in runs.items()}})
    fractions = [p["demo_dollar_fraction"] for p in per_round if p["demo_dollar_fraction"] is not None]
    return {"price_per_hour": price, "eval_every": args.eval_every, "baseline": args.fullft_baseline,
            "baseline_overrides": baseline, "rounds": rounds, "per_round": per_round,
            "median_demo_dollar_fraction": statistics.median(fractions) if fractions else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", nargs="+", default=["speed", "accuracy", "fullft", "mfu"],
                        choices=["speed", "accuracy", "fullft", "mfu"])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per speed run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the speed phase")
    parser.add_argument("--contenders", nargs="+", default=SPEED_CONTENDERS, help="speed phase: who runs (leantrain first)")
    parser.add_argument("--tag", default="", help="suffix of the results file (e.g. speed-attention.json)")
    parser.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs (accuracy, fullft)")
    parser.add_argument("--accuracy-contenders", nargs="+", default=["leantrain", "hf-best"],
                        help="whole-recipe runs (the tutorial configuration takes ~6x as long; add hf-tutorial to include it)")
    parser.add_argument("--eval-every", type=int, default=25, help="fullft: evaluate every N steps")
    parser.add_argument("--fullft-rounds", type=int, default=1)
    parser.add_argument("--fullft-baseline", choices=FULLFT_BASELINES, default="no-cuts",
                        help="fullft: the baseline without any cut (as `leantrain ablate`), or keeping length bucketing and fast dropout")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every contender (default: torch's own); 1 avoids OpenMP stalls on a busy machine")
    parser.add_argument("--no-docs", action="store_true", help="do not re-render docs/benchmarks.md")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    phases = {"speed": phase_speed, "accuracy": phase_accuracy, "fullft": phase_fullft}
    for phase in args.phases:
        started, load_at_start = time.perf_counter(), os.getloadavg()
        print(f"== {phase}", flush=True)
        if phase == "mfu":
            from bench.mfu import phase_mfu

            result = phase_mfu(args.threads)
        else:
            result = phases[phase](args)
        result["machine"] = {**machine(), "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()}
        result["threads"] = args.threads
        result["command"] = "python bench/vs_hf.py " + " ".join(sys.argv[1:])
        result["phase_seconds"] = round(time.perf_counter() - started, 1)
        (RESULTS / f"{phase}{'-' + args.tag if args.tag else ''}.json").write_text(json.dumps(result, indent=2))
    if not args.no_docs:
        from bench.report import write_docs

        write_docs(RESULTS, REPO / "docs" / "benchmarks.md")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
