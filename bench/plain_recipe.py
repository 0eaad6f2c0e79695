"""The recipe a user writes first, on data the project was never tuned on, against
Hugging Face Trainer + PEFT configured as its docs recommend for speed.

The plain recipe (issue 16): the bundled MiniLM, LoRA r=8 alpha=32 on query/value, bf16,
batch 32, lr 1e-3, one epoch, max_length 128, and nothing else: whatever leantrain does
beyond that is its defaults. The Trainer: the same model, LoRA (dropout included), batch,
lr, schedule, epoch and seed, with bf16, dynamic padding (DataCollatorWithPadding) and
``group_by_length``, no checkpoints, one evaluation at the end.

Both run as the user would, each in a fresh process: ``leantrain train RECIPE --no-smoke``
(tokenizing, training, evaluating, saving the adapter), and a Python script that
tokenizes with ``datasets``, trains, evaluates and saves the adapter. The tables give the
whole process (start of the interpreter to its exit) and the training time per optimizer
step, per data set; rounds alternate in rotated order; medians and the median of the
per-round ratios.

    python bench/plain_recipe.py [--sets debian-sections docstrings] [--rounds 3]

Writes bench/results/plain-recipe.json. The data sets come from bench/heldout_data.py
(built here when missing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "data" / "heldout"
RESULTS = REPO / "bench" / "results"
PLAIN = {
    "model": {"name_or_path": "bundled:minilm", "task": "sequence-classification"},
    "data": {"text_column": "text", "label_column": "label", "max_length": 128},
    "cuts": {"lora": {"r": 8, "alpha": 32, "target_modules": ["query", "value"]}, "precision": "bf16"},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.001, "seed": 0},
}


def plain_recipe(data_set: str, out: Path, extra: dict | None = None) -> Path:
    """Write the plain recipe for ``data_set`` (YAML is a superset of JSON)."""
    recipe = json.loads(json.dumps(PLAIN))
    recipe["data"].update(train=str(HELDOUT / data_set / "train.csv"), eval=str(HELDOUT / data_set / "val.csv"))
    recipe["output"] = {"dir": str(out / "run")}
    for section, values in (extra or {}).items():
        recipe.setdefault(section, {}).update(values)
    path = out / "recipe.yaml"
    path.write_text(json.dumps(recipe, indent=1))
    return path


def run_trainer(data_set: str, out: str, max_steps: int | None = None) -> dict:
    """Trainer + PEFT on the plain recipe's settings; runs inside the fresh process."""
    import csv

    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging

    from leantrain.models.loading import resolve_model_path

    logging.set_verbosity_error()
    lora, train = PLAIN["cuts"]["lora"], PLAIN["train"]

    def rows(split):
        with open(HELDOUT / data_set / f"{split}.csv", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    train_rows, eval_rows = rows("train"), rows("val")
    labels = sorted({r["label"] for r in train_rows})
    index = {n: i for i, n in enumerate(labels)}
    path = resolve_model_path(PLAIN["model"]["name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(path)

    def dataset(split_rows):
        ds = Dataset.from_dict({"text": [r["text"] for r in split_rows], "label": [index[r["label"]] for r in split_rows]})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=PLAIN["data"]["max_length"]),
                      batched=True, remove_columns=["text"])

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index)
    model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.05,
                                             target_modules=lora["target_modules"], task_type=TaskType.SEQ_CLS))
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=train["batch_size"], per_device_eval_batch_size=train["batch_size"],
        num_train_epochs=train["epochs"], max_steps=max_steps or -1, learning_rate=train["lr"], lr_scheduler_type="linear", max_grad_norm=1.0,
        seed=train["seed"], data_seed=train["seed"], use_cpu=not torch.cuda.is_available(), bf16=True,
        train_sampling_strategy="group_by_length", dataloader_num_workers=0, dataloader_pin_memory=False,
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to="none", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train_rows), eval_dataset=dataset(eval_rows),
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    result = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(os.path.join(out, "model"))
    return {"steps": result.global_step, "train_seconds": result.metrics["train_runtime"],
            "accuracy": metrics["eval_accuracy"]}


def _timed(command: list[str], what: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` in a fresh process; it and its wall time, start to exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done, wall


def time_leantrain(recipe: Path, run_dir: Path, what: str) -> dict:
    """``leantrain train RECIPE`` as a user runs it (fresh process, no smoke test): its
    figures from summary.json plus the whole process's wall time."""
    command = [str(Path(sys.executable).parent / "leantrain"), "train", str(recipe), "--no-smoke", "--quiet",
               "--set", f"output.dir={run_dir}"]
    _, wall = _timed(command, what)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"], "accuracy": summary["eval"]["accuracy"],
            "cost_usd": summary["cost_usd"], "stop_reason": summary["stop_reason"], "wall_seconds": round(wall, 3)}


def run_contender(name: str, data_set: str, extra: dict | None = None) -> dict:
    """One run in a fresh process; its figures plus the whole process's wall time."""
    out = Path(tempfile.mkdtemp(prefix=f"plain-{name}-"))
    if name == "leantrain":
        figures = time_leantrain(plain_recipe(data_set, out, extra), out / "run", f"leantrain on {data_set}")
    else:
        done, wall = _timed([sys.executable, __file__, "--trainer", data_set, str(out)], f"trainer on {data_set}")
        figures = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_seconds": round(wall, 3)}
    figures["step_seconds"] = round(figures["train_seconds"] / figures["steps"], 5)
    return figures


def compare(data_set: str, rounds: int, extra: dict | None = None) -> dict:
    names = ["leantrain", "trainer"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            runs[name].append(run_contender(name, data_set, extra))
            print(f"  {data_set} round {r + 1} {name}: {json.dumps(runs[name][-1])}", flush=True)

    def median(name, key):
        return statistics.median(f[key] for f in runs[name])

    def ratios(key):  # Trainer / leantrain per round: above 1 means leantrain is faster
        return [t[key] / lt[key] for lt, t in zip(runs["leantrain"], runs["trainer"])]

    return {
        "rounds": runs,
        "median": {n: {k: median(n, k) for k in ("wall_seconds", "train_seconds", "step_seconds", "accuracy")} for n in names},
        "speedup_whole_process": statistics.median(ratios("wall_seconds")),
        "speedup_per_step": statistics.median(ratios("step_seconds")),
        "speedup_whole_process_rounds": [round(x, 3) for x in ratios("wall_seconds")],
        "speedup_per_step_rounds": [round(x, 3) for x in ratios("step_seconds")],
        "accuracy_gap_points": 100 * (median("leantrain", "accuracy") - median("trainer", "accuracy")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["debian-sections", "docstrings"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS / "plain-recipe.json"))
    parser.add_argument("--trainer", nargs=2, metavar=("SET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer:
        sys.path.insert(0, str(REPO))
        print(json.dumps(run_trainer(*args.trainer)))
        return
    missing = [s for s in args.sets if not (HELDOUT / s / "train.csv").exists()]
    if missing:
        subprocess.run([sys.executable, str(REPO / "bench" / "heldout_data.py"), "--only", ",".join(missing)], check=True)
    sys.path.insert(0, str(REPO))
    from bench.vs_hf import machine

    results = {"machine": machine(), "recipe": PLAIN, "rounds": args.rounds, "sets": {}}
    for data_set in args.sets:
        results["sets"][data_set] = found = compare(data_set, args.rounds)
        print(f"{data_set}: whole process {found['speedup_whole_process']:.2f}x, per step {found['speedup_per_step']:.2f}x, "
              f"accuracy {found['median']['leantrain']['accuracy']:.3f} vs {found['median']['trainer']['accuracy']:.3f}",
              flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
