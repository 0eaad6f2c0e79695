"""Compression on the demo: int8, a distilled 3-block student, 30% FFN pruning; side by side.

Every figure compares the fine-tuned demo model (runs/demo, LoRA merged) with its
compressed form on the demo's eval split, and latency on the same batch of eval
examples, the two models alternating on every repeat (median). Run from the repo root
after `leantrain train examples/demo.yaml` (and, for the student, after training
examples/distill-student.yaml, or pass --train-student); either run is trained first
if it is missing:

    .venv/bin/python bench/compress.py [--student runs/demo-student] [--out runs/bench-compress]

The issue's acceptance thresholds are checked and printed as PASS/FAIL with the figures.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from leantrain.compress import compress
from leantrain.compress.measure import eval_data, run_recipe
from leantrain.compress.pipeline import _plain, measure_pair


def ensure_run(run_dir: str, recipe: str) -> None:
    """Train ``recipe`` into ``run_dir`` unless it already holds a saved model, so that
    `make bench-cuts` works on a fresh clone (the teacher is the demo run, the student its
    distilled 3-block version)."""
    if (Path(run_dir) / "model" / "leantrain.json").is_file():
        return
    from leantrain.engine.run import train

    print(f"training {recipe} into {run_dir} (no saved model there yet)", flush=True)
    train(recipe, overrides=[f"output.dir={run_dir}"], show_progress=False)


def student_report(run_dir: str, student_dir: str, recipe: str, batch: int, repeats: int) -> dict:
    """Teacher run against an already trained student run, measured like `compress` does."""
    from leantrain.predict import load_run_model

    teacher, tokenizer, _ = load_run_model(run_dir)
    student = load_run_model(student_dir)[0]
    data = eval_data(run_recipe(run_dir, recipe), tokenizer)
    report = measure_pair(_plain(teacher), _plain(student), data, batch, repeats)
    report["steps"] = {"distill": {"student_run": student_dir,
                                   "layers": student.config.num_hidden_layers}}
    return report


def line(name: str, report: dict) -> str:
    before, after = report["eval_before"]["accuracy"], report["eval_after"]["accuracy"]
    return (f"{name:<24} linear weights {report['linear_weight_ratio']:>5.2f}x smaller | "
            f"latency {report['latency_ms_before']:>8.1f} -> {report['latency_ms_after']:>8.1f} ms "
            f"({report['latency_ratio']:.2f}x faster) | accuracy {before:.4f} -> {after:.4f} "
            f"({(after - before) * 100:+.2f} points)")


def check(label: str, ok: bool, detail: str) -> bool:
    print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {detail}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--recipe", default="examples/demo.yaml")
    parser.add_argument("--student", default="runs/demo-student", help="a trained student run (examples/distill-student.yaml)")
    parser.add_argument("--train-student", action="store_true", help="train the student via compress --distill-into instead")
    parser.add_argument("--out", default="runs/bench-compress")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", choices=("int8", "distill", "prune"), action="append")
    args = parser.parse_args()
    out = Path(args.out)
    wanted = args.only or ["int8", "distill", "prune"]
    common = {"recipe": args.recipe, "latency_batch_size": args.batch, "repeats": args.repeats}
    reports: dict[str, dict] = {}
    ensure_run(args.run, args.recipe)
    if "distill" in wanted and not args.train_student:
        ensure_run(args.student, "examples/distill-student.yaml")
    if "int8" in wanted:
        reports["int8"] = compress(args.run, out / "int8", quantize="int8", **common)
    if "distill" in wanted:
        if args.train_student:
            reports["distill"] = compress(args.run, out / "student", distill_into="examples/distill-student.yaml", **common)
        else:
            reports["distill"] = student_report(args.run, args.student, args.recipe, args.batch, args.repeats)
    if "prune" in wanted:
        reports["prune"] = compress(args.run, out / "ffn30", prune="ffn:0.3", recover_epochs=2.0, **common)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")

    print(f"conditions: {json.dumps(next(iter(reports.values()))['latency_conditions'])}")
    for name, report in reports.items():
        print(line(name, report))
    print("acceptance:")
    if "int8" in reports:
        r = reports["int8"]
        drop = (r["eval_before"]["accuracy"] - r["eval_after"]["accuracy"]) * 100
        check("int8 linear weights >= 3.5x smaller", r["linear_weight_ratio"] >= 3.5, f"{r['linear_weight_ratio']}x")
        check("int8 latency >= 1.5x lower", r["latency_ratio"] >= 1.5, f"{r['latency_ratio']}x")
        check("int8 accuracy within 1 point", drop <= 1.0, f"{-drop:+.2f} points change")
    if "distill" in reports:
        r = reports["distill"]
        kept = r["eval_after"]["accuracy"] / r["eval_before"]["accuracy"]
        check("student keeps >= 95% of the teacher's accuracy", kept >= 0.95, f"{kept * 100:.1f}%")
        check("student latency <= 60% of the teacher's", 1 / r["latency_ratio"] <= 0.60, f"{100 / r['latency_ratio']:.1f}%")
    if "prune" in reports:
        r = reports["prune"]
        drop = (r["eval_before"]["accuracy"] - r["eval_after"]["accuracy"]) * 100
        check("30% FFN pruning + recovery: accuracy within 2 points", drop <= 2.0, f"{-drop:+.2f} points change")
        check("30% FFN pruning: latency lower", r["latency_ratio"] > 1.0, f"{r['latency_ratio']}x")


if __name__ == "__main__":
    main()
