"""Print the LLM demo's before/after: the held-out figures of the starting model (the
run's `train.eval_at_start`) next to the fine-tuned one's, and a few generations of each.

Reads only the run directory: `summary.json` (figures) and `samples.jsonl` (the greedy
replies of every evaluation; the first is the starting model, the last the final one).

    python examples/before_after.py runs/demo-llm [--examples 6] [--save bench/results/demo_llm.json]

``--save`` writes the same figures as JSON (what the README's LLM demo block is rendered from,
by scripts/update_readme.py), with the CPU and commit they were measured on.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path


def load(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    if "eval_at_start" not in summary.get("extras", {}):
        sys.exit(f"{run_dir}/summary.json has no extras.eval_at_start: run the recipe with train.eval_at_start: true")
    evaluations = sorted({s["evaluation"] for s in samples})
    first = [s for s in samples if s["evaluation"] == evaluations[0]]
    last = [s for s in samples if s["evaluation"] == evaluations[-1]]
    return summary, first, last


def question(prompt: str) -> str:
    """The docstring part of a rendered chat prompt, shortened for a terminal line."""
    text = prompt.split("<|im_start|>user", 1)[-1].split("<|im_end|>", 1)[0]
    text = text.strip().split("\n\n", 1)[-1].replace("\n", " ")
    return text if len(text) <= 70 else text[:67] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--save", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    summary, before, after = load(args.run_dir)
    start, end = summary["extras"]["eval_at_start"], summary["eval"]
    references = Counter(s["reference"] for s in after)
    label, count = references.most_common(1)[0]
    print(f"\nheld-out: {len(after)} conversations; always answering the most common reference "
          f"({label!r}) would score {count / len(after):.3f}")
    print(f"{'':<14}{'before':>10}{'after':>10}")
    for key in ("loss", "perplexity", "exact_match", "contains"):
        if key in start and key in end:
            print(f"{key:<14}{start[key]:>10.3f}{end[key]:>10.3f}")
    print(f"training: {summary['steps']} steps, {summary['train_seconds']:.0f} s, ${summary['cost_usd']:.4f}")
    pairs = list(zip(before, after))[: args.examples]
    if args.save:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
        saved = {"cpu": cpu, "commit": commit, "eval_rows": len(after), "majority_label": label,
                 "majority_rate": round(count / len(after), 4), "before": start, "after": end,
                 "steps": summary["steps"], "epochs": summary["epochs"], "train_seconds": summary["train_seconds"], "cost_usd": summary["cost_usd"],
                 "examples": [{"docstring": question(a["prompt"]), "reference": a["reference"],
                               "before": b["reply"].strip(), "after": a["reply"].strip()} for b, a in pairs]}
        args.save.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"\n{'docstring':<72}{'reference':<12}{'before':<32}after")
    for b, a in pairs:
        print(f"{question(a['prompt']):<72}{a['reference']:<12}{b['reply'].strip()[:28]!r:<32}{a['reply'].strip()!r}")


if __name__ == "__main__":
    main()
