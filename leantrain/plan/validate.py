"""Check the planner against measurement: plan a recipe, run it briefly, compare.

Why in the library: the planner's claims are only as good as this comparison, and the
test suite and ``bench/planner_accuracy.py`` must make the same one. The measured side
is a real short run on this CPU: the memory accountant's tensor accounting (weights,
gradients, optimizer states, largest saved activations; observe/accountant.py) and the
cost ledger's FlopCounterMode count of the first step on the real model. The planner's
comparable figure is its ``accounted_bytes`` (its breakdown without the workspace and
framework overhead that the accountant does not see).
"""
from __future__ import annotations

import copy


def long_text_rows(n: int, words: int = 80) -> list[dict]:
    """Rows longer than any max_length used here, so every batch is exactly max_length
    long and a prediction at one sequence length is comparable with the run."""
    topics = ["sports", "food", "tech"]
    vocab = ["goal", "bread", "code", "team", "soup", "server", "match", "cheese", "kernel", "the", "very", "then"]
    return [{"text": " ".join(vocab[(i * 7 + j * 3) % len(vocab)] for j in range(words)), "label": topics[i % 3]}
            for i in range(n)]


def compare(recipe_data: dict) -> dict:
    """Predicted vs measured peak (accounted) bytes and FLOPs per sample of one recipe."""
    from leantrain.engine.run import as_recipe, train
    from leantrain.plan.planner import plan

    recipe = as_recipe(copy.deepcopy(recipe_data))
    predicted = plan(recipe, gpus=["cpu"], recommend=False)
    summary = train(as_recipe(copy.deepcopy(recipe_data)), show_progress=False).summary
    measured_bytes = summary["extras"]["memory_breakdown"]["total"]
    predicted_bytes = predicted["accounted_bytes"]
    predicted_flops = predicted["flops_per_step"] / predicted["setup"]["effective_batch"]
    measured_flops = summary["flops_per_sample"]
    return {
        "predicted_bytes": predicted_bytes, "measured_bytes": measured_bytes,
        "bytes_error": predicted_bytes / measured_bytes - 1,
        "predicted_flops_per_sample": predicted_flops, "measured_flops_per_sample": measured_flops,
        "flops_error": predicted_flops / measured_flops - 1,
        "predicted_breakdown": predicted["memory_breakdown"],
        "measured_breakdown": summary["extras"]["memory_breakdown"],
        "seq_len": predicted["seq_len"]["memory"], "cuts": predicted["setup"]["cuts"],
    }


def short_run_recipe(model_dir: str, task: str, data_file: str, out_dir: str, batch: int, max_length: int,
                     cuts: dict) -> dict:
    """A two-step run on ``data_file`` with ``cuts`` (a recipe ``cuts`` section)."""
    return {
        "model": {"name_or_path": model_dir, "task": task, "from_scratch": True},
        "data": {"train": data_file, "max_length": max_length, "eval_fraction": 0.05, "cache": False},
        "cuts": cuts,
        "train": {"epochs": 1, "max_steps": 2, "batch_size": batch, "log_every": 1, "seed": 0, "bucket_by_length": False},
        "output": {"dir": out_dir, "save_model": False},
    }
