"""Where a training step of the plain recipe spends its CPU time, leantrain against the Trainer.

    python bench/profile_plain.py [--set docstrings] [--steps 20] [--contender leantrain|trainer]

Runs ``--steps`` optimizer steps of the plain recipe (bench/plain_recipe.py) under
``torch.profiler`` in this process, after 3 unprofiled warm-up steps, and prints the
self CPU time per step of the operator groups that matter (matmuls, attention, dropout,
normalisation, activations, casts, optimizer, the rest) and the top operators. Run it once
per contender, in fresh processes; the figures are per step, so they compare directly.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GROUPS = {  # operator-name fragment -> group (first match wins)
    "flash_attention": "attention (fused SDPA)", "scaled_dot_product": "attention (fused SDPA)",
    "softmax": "attention (softmax)", "bmm": "matmul", "addmm": "matmul", "aten::mm": "matmul", "matmul": "matmul",
    "linear": "matmul", "bernoulli": "dropout", "dropout": "dropout", "native_dropout": "dropout",
    "layer_norm": "layer norm", "gelu": "activation", "tanh": "activation", "_to_copy": "casts", "copy_": "casts",
    "adam": "optimizer", "_foreach": "optimizer", "embedding": "embedding",
}


def group_of(name: str) -> str:
    return next((g for fragment, g in GROUPS.items() if fragment in name), "other")


class Profiled:
    """Start the profiler after ``warmup`` optimizer steps and stop after ``steps`` more."""

    def __init__(self, warmup: int, steps: int):
        import torch

        self.warmup, self.steps, self.seen = warmup, steps, 0
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def step(self) -> None:
        self.seen += 1
        if self.seen == self.warmup:
            self.profiler.__enter__()
        elif self.seen == self.warmup + self.steps:
            self.profiler.__exit__(None, None, None)

    def table(self) -> dict:
        groups: dict[str, float] = defaultdict(float)
        ops = []
        for event in self.profiler.key_averages():
            if event.self_cpu_time_total <= 0:
                continue
            groups[group_of(event.key)] += event.self_cpu_time_total / 1e3 / self.steps
            ops.append((event.self_cpu_time_total / 1e3 / self.steps, event.key))
        ops.sort(reverse=True)
        return {"ms_per_step": round(sum(groups.values()), 1),
                "groups_ms_per_step": {g: round(v, 1) for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
                "top_ops_ms_per_step": [(name, round(ms, 1)) for ms, name in ops[:15]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="docstrings")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--contender", choices=["leantrain", "trainer"], default="leantrain")
    args = parser.parse_args()
    import tempfile

    import torch

    work = Path(tempfile.mkdtemp(prefix="profile-plain-"))
    profiled = Profiled(3, args.steps)
    # Both contenders step a torch optimizer once per optimizer step: the one hook they share.
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: profiled.step())
    total = 3 + args.steps + 1
    from bench.plain_recipe import plain_recipe, run_trainer

    if args.contender == "leantrain":
        from leantrain import train

        train(str(plain_recipe(args.set, work, {"train": {"max_steps": total}})), show_progress=False)
    else:
        run_trainer(args.set, str(work), max_steps=total)
    print(json.dumps({"contender": args.contender, "set": args.set, "steps": args.steps, **profiled.table()}, indent=1))


if __name__ == "__main__":
    main()
