"""One training process for the distributed tests: run by torchrun (or directly, as one
process). It trains a small plain module through ``leantrain.train`` and records, per
rank, which examples it trained on in which epoch, by riding an instrument on the cut
hooks (``on_example_losses`` sees only real examples, never a rank's stand-in).

Usage: python ddp_worker.py SPEC.json, SPEC holding run_dir, out, epochs, accumulation,
fsdp, resume, kill_at (the number of recorded micro-batches after which rank kill_rank sends
itself SIGTERM, like a preempted spot instance) and kill_rank.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import torch

import leantrain.engine.session as session_module
from leantrain import train
from leantrain.observe.accountant import MemoryAccountant

N_EXAMPLES, BATCH_SIZE = 34, 4  # 9 micro-batches: a short last batch and a short last step


def examples(n: int = N_EXAMPLES):
    gen = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(n, 6, generator=gen), torch.randint(0, 2, (n,), generator=gen)
    # input_ids only give each example a length, so batches are bucketed by length.
    return [{"x": xs[i], "y": ys[i], "input_ids": [0] * (3 + (i * 7) % 11)} for i in range(n)]


def collate(items):
    return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items])}


def loss_fn(model, batch):
    return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def make_model() -> torch.nn.Module:
    """With dropout: W ranks match one process accumulating W only if each micro-batch draws
    the same mask wherever it runs (the RNG follows the global micro-batch, not the rank)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))


def recipe(run_dir: str, epochs: float, accumulation: int, fsdp: bool = False) -> dict:
    cuts = {"grad_accumulation": {"steps": accumulation}} if accumulation > 1 else {}
    if fsdp:
        cuts["fsdp"] = True
    return {"train": {"epochs": epochs, "batch_size": BATCH_SIZE, "seed": 5, "lr": 1e-2, "checkpoint_every": 100,
                      "log_every": 1, "schedule": "linear"},
            "cuts": cuts, "output": {"dir": run_dir}}


def run(spec: dict) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    seen: list = []

    class Recorder(MemoryAccountant):
        def on_example_losses(self, indices, losses, run):
            super().on_example_losses(indices, losses, run)
            seen.append([run.state.epoch, indices.tolist()])
            if spec.get("kill_at") and len(seen) == spec["kill_at"] and rank == spec.get("kill_rank", 0):
                os.kill(os.getpid(), signal.SIGTERM)

    session_module.MemoryAccountant = Recorder
    try:
        result = train(recipe(spec["run_dir"], spec["epochs"], spec.get("accumulation", 1), spec.get("fsdp", False)),
                       model=make_model(),
                       loss_fn=loss_fn, train_data=examples(), eval_data=examples(8), collate_fn=collate,
                       show_progress=False, resume=spec.get("resume"))
    finally:
        session_module.MemoryAccountant = MemoryAccountant
    record = {"rank": rank, "seen": seen, "status": result.summary["status"], "steps": result.summary["steps"],
              "world_size": result.summary.get("world_size"), "signal": result.summary.get("signal")}
    with open(os.path.join(spec["out"], f"seen-rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)
    return result.summary


if __name__ == "__main__":
    summary = run(json.loads(open(sys.argv[1], encoding="utf-8").read()))
    sys.exit(128 + signal.SIGTERM if summary["status"] == "preempted" else 0)
