"""What each cut saves on the demo: every configuration in a fresh process, side by side.

Each rung runs `leantrain train examples/demo.yaml` for the same number of steps with
one change, then the table shows memory, speed, dollars and accuracy as ratios against
the full fine-tune in fp32. Run from the repo root after `make demo` prepared the data:

    .venv/bin/python bench/demo_cuts.py --steps 40
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Full fine-tuning gets the usual full-fine-tune learning rate; LoRA keeps the demo's.
FULL = ["cuts.lora=false", "cuts.precision=false", "train.lr=5e-5"]
RUNGS = {
    "full fine-tune, fp32 (baseline)": FULL,
    "from scratch, fp32": FULL + ["model.from_scratch=true"],
    "full fine-tune + bf16": FULL + ["cuts.precision=bf16"],
    "full fine-tune + checkpointing": FULL + ["cuts.gradient_checkpointing=true"],
    "LoRA, fp32": ["cuts.precision=false"],
    "LoRA + bf16 (demo)": [],
    "LoRA + bf16, no length bucketing": ["train.bucket_by_length=false"],
    "LoRA + bf16 + frozen base in bf16": ["cuts.precision.frozen_dtype=bf16"],
    "LoRA + bf16 + checkpointing": ["cuts.gradient_checkpointing=true"],
    "LoRA + bf16 + accumulation 2x8": ["cuts.grad_accumulation=2", "train.batch_size=8"],
}


def run_rung(name: str, sets: list[str], steps: int, out: Path) -> dict:
    run_dir = out / name.split(" (")[0].replace(" ", "_").replace(",", "").replace("+", "plus")
    cmd = [sys.executable, "-m", "leantrain", "train", "examples/demo.yaml", "--quiet", "--no-smoke",
           "--set", f"output.dir={run_dir}", "--set", f"train.max_steps={steps}",
           "--set", "output.save_model=false"]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"name": name, "sets": sets, **{k: summary[k] for k in (
        "peak_memory_bytes", "peak_rss_bytes", "samples_per_second", "train_seconds", "cost_usd",
        "trainable_params", "total_params", "eval")}, "memory_breakdown": summary["extras"].get("memory_breakdown")}


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| configuration | tensor memory (MB) | memory vs baseline | samples/s | speed vs baseline | $ per 1k samples | trainable params | accuracy after the run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = r["peak_memory_bytes"] / 1e6
        per_k = r["cost_usd"] / max(r["samples_per_second"] * r["train_seconds"], 1) * 1000
        lines.append(
            f"| {r['name']} | {mem:.0f} | {r['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x | "
            f"{r['samples_per_second']:.1f} | {r['samples_per_second'] / base['samples_per_second']:.2f}x | "
            f"{per_k:.5f} | {r['trainable_params']:,} | {r['eval'].get('accuracy', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output", default="runs/bench-cuts")
    parser.add_argument("--only", nargs="*", help="rung names to run (default: all)")
    args = parser.parse_args()
    out = Path(args.output)
    rows = [run_rung(n, s, args.steps, out) for n, s in RUNGS.items() if not args.only or n in args.only]
    (out / "demo_cuts.json").write_text(json.dumps(rows, indent=2))
    print(f"{args.steps} steps of batch 16 (accumulation rung: 2x8) on the demo data, this machine:\n")
    print(table(rows))


if __name__ == "__main__":
    main()
