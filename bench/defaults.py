"""What each default-on cut buys on the plain recipe, on held-out data: the defaults as
shipped against the same recipe with one of them turned off, side by side.

    python bench/defaults.py [--sets debian-sections docstrings] [--rounds 3] [--steps 60]

Each variant runs `leantrain train` in a fresh process (bench/plain_recipe.py), for
``--steps`` optimizer steps; rounds alternate in rotated order; the table gives the median
seconds per step and the median of the per-round ratios (variant / defaults: above 1 means
the default pays). Writes bench/results/defaults.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.plain_recipe import RESULTS, run_contender  # noqa: E402

VARIANTS = {
    "defaults": {},
    "fast_dropout off": {"cuts": {"fast_dropout": False}},
    "matmul attention off": {"cuts": {"precision": {"dtype": "bf16", "cpu_matmul_attention": False}}},
    "both off": {"cuts": {"fast_dropout": False, "precision": {"dtype": "bf16", "cpu_matmul_attention": False}}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["debian-sections", "docstrings"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from bench.vs_hf import machine

    results = {"machine": machine(), "steps": args.steps, "rounds": args.rounds, "sets": {}}
    names = list(VARIANTS)
    for data_set in args.sets:
        runs = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                extra = json.loads(json.dumps(VARIANTS[name]))
                extra.setdefault("train", {})["max_steps"] = args.steps
                runs[name].append(run_contender("leantrain", data_set, extra))
                print(f"  {data_set} round {r + 1} {name}: {runs[name][-1]['step_seconds']:.4f} s/step", flush=True)
        table = {}
        for name in names:
            ratios = [v["step_seconds"] / d["step_seconds"] for v, d in zip(runs[name], runs["defaults"])]
            table[name] = {"step_seconds": statistics.median(v["step_seconds"] for v in runs[name]),
                           "slowdown_vs_defaults": round(statistics.median(ratios), 3),
                           "rounds": [round(x, 3) for x in ratios],
                           "accuracy": statistics.median(v["accuracy"] for v in runs[name])}
            print(f"{data_set}: {name}: {table[name]['step_seconds']:.4f} s/step, x{table[name]['slowdown_vs_defaults']} "
                  f"vs defaults", flush=True)
        results["sets"][data_set] = {"table": table, "runs": runs}
    out = RESULTS / "defaults.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
