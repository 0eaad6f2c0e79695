"""``leantrain compress``: distil, prune and/or quantize a trained run, and measure both sides.

The steps run in the order that makes sense for inference cost: distillation (a new,
smaller model), then structured pruning with a short recovery fine-tune, then
quantization (last, because training needs float weights). The original and the result
are then evaluated on the run's own eval split and timed side by side.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from leantrain.compress.io import file_bytes, save_compressed
from leantrain.compress.measure import eval_data, evaluate, latency_batch, run_recipe, side_by_side_latency
from leantrain.compress.prune import prune_ffn, prune_heads, prune_magnitude
from leantrain.compress.quantize import METHODS, linear_payload_bytes, quantize_model
from leantrain.errors import UserError

PRUNE_KINDS = ("ffn", "heads", "magnitude")
CALIBRATION_BATCHES = 8


@dataclass
class PruneSpec:
    kind: str
    fraction: float

    @classmethod
    def parse(cls, text: str) -> "PruneSpec":
        """``ffn:0.3``, ``heads:0.25`` or ``magnitude:0.5``."""
        kind, _, value = text.partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if kind not in PRUNE_KINDS or not 0 < fraction < 1:
            raise UserError(f"--prune {text!r}: use KIND:FRACTION with KIND one of {', '.join(PRUNE_KINDS)} "
                            "and 0 < FRACTION < 1, e.g. ffn:0.3")
        return cls(kind, fraction)


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.float().eval()


def _classification_loss(model, batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return F.cross_entropy(model(**inputs).logits.float(), batch["labels"])


def _distill(run_dir: Path, student_recipe: str, out: Path) -> torch.nn.Module:
    """Train the student recipe with the run as its teacher; returns the student."""
    from leantrain import train
    from leantrain.predict import load_run_model
    from leantrain.recipe import load_recipe

    recipe = load_recipe(student_recipe)
    data = recipe.resolved_dump()
    settings = data["cuts"].get("distill") or {}
    data["cuts"]["distill"] = {**settings, "enabled": True, "teacher": str(run_dir)}
    data["output"]["dir"] = str(out / "student-run")
    train(data, show_progress=False)
    return _plain(load_run_model(out / "student-run")[0])


def _recover(model, recipe, data, out: Path, epochs: float, lr: float) -> dict:
    """A short full fine-tune of the pruned model on the run's training data.

    Through ``train(model=...)``: the pruned model's shapes are not its config's (heads),
    so it is passed as a module; its collate returns a plain dict, as that API expects.
    """
    from leantrain import train

    if recipe.model.task != "sequence-classification":
        raise UserError("--recover-epochs: recovery fine-tuning is implemented for sequence classification; pass 0")
    model.requires_grad_(True)  # a loaded run model comes back frozen (inference mode)
    settings = {"train": {"epochs": epochs, "batch_size": recipe.train.batch_size, "lr": lr, "seed": recipe.train.seed,
                          "schedule": "linear", "warmup_ratio": 0.06},
                "output": {"dir": str(out / "recovery-run"), "save_model": False}}
    result = train(settings, model=model, loss_fn=_classification_loss, train_data=data.train_examples,
                   eval_data=data.examples, collate_fn=lambda rows: dict(data.collate(rows)), show_progress=False)
    return {"epochs": epochs, "lr": lr, "steps": result.summary["steps"], "train_seconds": result.summary["train_seconds"]}


def _prune(model, spec: PruneSpec, data, importance: str) -> dict:
    if spec.kind == "magnitude":
        return prune_magnitude(model, spec.fraction)
    calibration = []
    if importance == "activation":
        loader = data.batches(data.train_examples)
        calibration = [batch for _, batch in zip(range(CALIBRATION_BATCHES), loader)]
    shrink = prune_ffn if spec.kind == "ffn" else prune_heads
    return shrink(model, spec.fraction, importance=importance, batches=calibration)


def _smoothing(model, data) -> tuple[dict, dict]:
    """SmoothQuant calibration of ``model`` on training batches (never the eval split), and its summary."""
    from leantrain.compress.smoothquant import ALPHAS, calibrate, probed_activation_bits

    loader = data.batches(data.train_examples)
    batches = [batch for _, batch in zip(range(CALIBRATION_BATCHES), loader)]
    chosen = calibrate(model, batches)
    smoothed = {name: c["alpha"] for name, c in chosen.items() if c["alpha"] > 0}
    summary = {"method": "smoothquant, per-layer alpha by calibration error", "alphas_tried": list(ALPHAS),
               "calibration_split": "train", "calibration_examples": sum(len(b["input_ids"]) for b in batches),
               "calibration_batches": len(batches), "activation_bits": probed_activation_bits(),
               "smoothed_layers": len(smoothed), "linear_layers": len(chosen), "alpha_by_layer": smoothed,
               "calibration_error": round(sum(c["error"] for c in chosen.values()) / len(chosen), 8),
               "calibration_error_unsmoothed": round(sum(c["error_unsmoothed"] for c in chosen.values()) / len(chosen), 8)}
    return chosen, summary


def measure_pair(before, after, data, latency_batch_size: int = 32, repeats: int = 15) -> dict:
    """Linear-weight bytes, side-by-side latency and eval metrics of two models, with ratios."""
    inputs = latency_batch(data, latency_batch_size)
    latency = side_by_side_latency({"before": before, "after": after}, inputs, repeats=repeats)
    report = {
        "linear_weight_bytes_before": linear_payload_bytes(before),
        "linear_weight_bytes_after": linear_payload_bytes(after),
        "latency_ms_before": latency["before"],
        "latency_ms_after": latency["after"],
        "eval_before": evaluate(before, data),
        "eval_after": evaluate(after, data),
        "latency_conditions": {"batch_shape": list(inputs["input_ids"].shape), "repeats": repeats,
                               "statistic": "median, models alternating", "device": "cpu",
                               "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                               "load_average_1m": round(os.getloadavg()[0], 2)},
        "versions": {"torch": torch.__version__},
    }
    report["linear_weight_ratio"] = round(report["linear_weight_bytes_before"] / report["linear_weight_bytes_after"], 3)
    report["latency_ratio"] = round(report["latency_ms_before"] / report["latency_ms_after"], 3)
    return report


def compress(run_dir: str | Path, output: str | Path, *, quantize: str | None = None, prune: str | None = None,
             distill_into: str | None = None, recipe: str | None = None, importance: str = "activation",
             recover_epochs: float = 1.0, recover_lr: float = 5e-5, latency_batch_size: int = 32,
             repeats: int = 15, threads: int | None = None) -> dict:
    """Compress a run, save the result to ``output/model`` and write ``output/compress.json``."""
    from leantrain.predict import load_run_model

    if quantize and quantize not in METHODS:
        raise UserError(f"--quantize {quantize!r}: use one of {', '.join(METHODS)}")
    spec = PruneSpec.parse(prune) if prune else None
    if not (quantize or spec or distill_into):
        raise UserError("nothing to do: pass --quantize, --prune and/or --distill-into")
    if threads:
        torch.set_num_threads(threads)
    run_dir, out = Path(run_dir), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    parsed = run_recipe(run_dir, recipe)
    teacher, tokenizer, meta = load_run_model(run_dir)
    before = _plain(teacher)
    data = eval_data(parsed, tokenizer)
    steps: dict = {}

    after = copy.deepcopy(before)
    if distill_into:
        after = _distill(run_dir, distill_into, out)
        steps["distill"] = {"student_recipe": str(distill_into), "layers": after.config.num_hidden_layers,
                            "teacher_layers": before.config.num_hidden_layers}
    if spec:
        steps["prune"] = {"kind": spec.kind, "fraction": spec.fraction, "importance": importance,
                          **_prune(after, spec, data, importance)}
        if spec.kind != "magnitude" and recover_epochs > 0:
            steps["recovery"] = _recover(after, parsed, data, out, recover_epochs, recover_lr)
        after = after.float().eval()
    if quantize:
        steps["quantize"] = {"method": quantize}
        smoothing = None
        if quantize == "int8":
            smoothing, steps["quantize"]["smoothing"] = _smoothing(after, data)
        after = quantize_model(after, quantize, smoothing=smoothing)

    saved_meta = {k: meta.get(k) for k in ("task", "labels", "max_length", "base_model")}
    model_dir = save_compressed(after, out / "model", {**saved_meta, "adapter": False, "compressed_from": str(run_dir)},
                                tokenizer=tokenizer, quantize=quantize)
    with tempfile.TemporaryDirectory() as tmp:
        size_before = file_bytes(save_compressed(before, Path(tmp) / "before", saved_meta))
    report = {"run_dir": str(run_dir), "model": str(model_dir), "steps": steps,
              **measure_pair(before, after, data, latency_batch_size, repeats)}
    report["size_bytes_before"], report["size_bytes_after"] = size_before, file_bytes(model_dir)
    report["size_ratio"] = round(size_before / report["size_bytes_after"], 3)
    (out / "compress.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
