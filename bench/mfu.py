"""MFU of the demo run: FLOPs it executed per second against this machine's matmul peak.

Why measured, not looked up: a shared 2-vCPU VM has no datasheet peak, and what matters
is how much of the achievable matmul rate the training run turns into useful work.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real demo
model (its cuts, bf16 autocast) for every batch of the recipe in training order, forward
+ backward: the first ``steps`` are what the speed phase trained on, all of them the
whole recipe.
The peak is the best of several large square matmuls, in bf16 and in fp32, timed in this
process with the same thread count as the runs.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of the best of ``repeats`` ``size``^3 matmuls (2 n^3 FLOPs each)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def recipe_flops_by_batch(steps: int, threads: int | None) -> dict:
    """FLOPs of every training batch of the demo recipe, forward + backward, in order:
    the first ``steps`` of them (the speed phase's runs) and all of them (the whole
    recipe). Counted batch by batch, not extrapolated from the first ones: with a frozen
    prefix the first epoch computes the prefix and later epochs read it from the cache."""
    from torch.utils.flop_counter import FlopCounterMode

    from leantrain.engine.loop import move_to_device
    from leantrain.engine.run import as_recipe
    from leantrain.engine.session import build_session

    recipe = as_recipe(str(Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"),
                       ["output.save_model=false"] + ([f"train.threads={threads}"] if threads else []))
    session = build_session(recipe)
    run = session.run
    per_batch, slots = [], []
    for epoch in range(int(recipe.train.epochs)):
        for _, batch in session.batches_from(epoch, 0):
            batch = move_to_device(batch, run.device)
            counter = FlopCounterMode(display=False)
            with counter:
                with session.cuts.forward_context(run):
                    loss = session.task.example_losses(run.model, batch).sum()
                loss.backward()
            run.optimizer.zero_grad(set_to_none=True)
            per_batch.append(counter.get_total_flops())
            slots.append(batch["input_ids"].numel())
    flops = sum(per_batch[:steps])
    return {"steps": steps, "flops": flops, "token_slots": sum(slots[:steps]), "flops_per_token_slot": flops / sum(slots[:steps]),
            "recipe_token_slots": sum(slots), "recipe_flops": sum(per_batch)}


def phase_mfu(threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    result: dict = {"torch_threads": torch.get_num_threads(), "matmul_peak_flops": peaks}
    speed_file, accuracy_file = RESULTS / "speed.json", RESULTS / "accuracy.json"
    steps = json.loads(speed_file.read_text())["steps"] if speed_file.exists() else 20
    counted = recipe_flops_by_batch(steps, threads)
    result["flops"] = counted
    runs = []
    if speed_file.exists():
        speed = json.loads(speed_file.read_text())
        seconds = statistics.median(r["leantrain"]["train_seconds"] for r in speed["rounds"])
        runs.append({"run": f"speed phase, {steps} steps (median of {len(speed['rounds'])})", "flops": counted["flops"], "train_seconds": seconds})
    if accuracy_file.exists() and "leantrain" in json.loads(accuracy_file.read_text())["runs"]:
        lt = json.loads(accuracy_file.read_text())["runs"]["leantrain"]
        runs.append({"run": f"whole demo recipe ({lt['steps']} steps)", "flops": counted["recipe_flops"], "train_seconds": lt["train_seconds"]})
    for item in runs:
        item["achieved_flops_per_second"] = item["flops"] / item["train_seconds"]
        item["mfu_vs_bf16_peak"] = item["achieved_flops_per_second"] / peaks["bf16"]
        item["mfu_vs_fp32_peak"] = item["achieved_flops_per_second"] / peaks["fp32"]
    result["runs"] = runs
    return result
