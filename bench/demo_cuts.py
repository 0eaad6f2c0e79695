"""What each cut saves on the demo: `leantrain ablate` on examples/demo.yaml.

Kept as the `make bench-cuts` entry point; the ladder itself (baseline, cuts added one at a
time, each cut alone, every rung in a fresh process) lives in leantrain/ablate/. Run
from the repo root after `make demo` prepared the data:

    .venv/bin/python bench/demo_cuts.py --steps 40
"""
from __future__ import annotations

import argparse
import sys

from leantrain.cli import main as leantrain

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output", default="runs/bench-cuts")
    args = parser.parse_args()
    sys.exit(leantrain(["ablate", "examples/demo.yaml", "--steps", str(args.steps), "--from-scratch",
                        "--output", args.output]))
