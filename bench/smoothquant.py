"""int8 ablation on the demo: what smoothing and 8-bit activations each buy, beside fp32.

Why: `leantrain compress --quantize int8` combines SmoothQuant smoothing (per-layer alpha,
calibrated on training batches) with 8-bit activations where the CPU's int8 kernel does
not saturate. This script builds each piece alone and together from one trained run and
reports, for each, against the fp32 model:

- accuracy on the run's eval split (192 examples on the demo: one example = 0.52 points,
  so this alone cannot tell close variants apart);
- KL(fp32 || int8) of the class distributions and prediction agreement on the held-out
  part of the TRAINING split (training examples not used for calibration): the quantity
  the method should shrink, measured on data that chose nothing;
- Linear-weight bytes (int8 + per-channel scales + smoothing vectors) and latency of one
  batch, all models timed alternately in one loop (median).

    .venv/bin/python bench/smoothquant.py [--run runs/demo] [--recipe examples/demo.yaml]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import warnings

import torch
import torch.nn.functional as F

from leantrain.compress.measure import eval_data, evaluate, latency_batch, run_recipe, side_by_side_latency
from leantrain.compress.pipeline import CALIBRATION_BATCHES, _plain
from leantrain.compress.quantize import linear_payload_bytes
from leantrain.compress.smoothquant import calibrate, eight_bit_activations_exact, quantize_smoothed


def _logits(model, batches) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits.float() for b in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--recipe", help="the recipe the run was trained with (default: RUN/config.yaml)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from leantrain.predict import load_run_model

    teacher, tokenizer, _ = load_run_model(args.run)
    fp32 = _plain(teacher)
    data = eval_data(run_recipe(args.run, args.recipe), tokenizer)
    train_batches = list(data.batches(data.train_examples))
    calibration, held_out = train_batches[:CALIBRATION_BATCHES], train_batches[CALIBRATION_BATCHES:]
    eight = 8 if eight_bit_activations_exact() else 7
    variants = {
        "fp32": fp32,
        "int8, 7-bit act. (torch.ao default)": quantize_smoothed(copy.deepcopy(fp32), None, 7),
        f"int8, {eight}-bit act.": quantize_smoothed(copy.deepcopy(fp32), None, eight),
        "int8, 7-bit + per-layer smoothing": quantize_smoothed(copy.deepcopy(fp32), calibrate(fp32, calibration, 7), 7),
        f"int8, {eight}-bit + global alpha 0.5": quantize_smoothed(
            copy.deepcopy(fp32), calibrate(fp32, calibration, eight, alphas=(0.5,)), eight),
        f"int8, {eight}-bit + per-layer smoothing (compress default)": quantize_smoothed(
            copy.deepcopy(fp32), calibrate(fp32, calibration, eight), eight),
    }
    reference = _logits(fp32, held_out)
    latency = side_by_side_latency(variants, latency_batch(data, args.batch), repeats=args.repeats)
    rows = {}
    for name, model in variants.items():
        got = _logits(model, held_out)
        kl = F.kl_div(F.log_softmax(got, -1), F.log_softmax(reference, -1), log_target=True, reduction="batchmean")
        rows[name] = {"accuracy": evaluate(model, data)["accuracy"], "held_out_kl": float(kl),
                      "held_out_agreement": float((got.argmax(-1) == reference.argmax(-1)).float().mean()),
                      "linear_weight_bytes": linear_payload_bytes(model), "latency_ms": latency[name]}
    base = rows["fp32"]
    print(f"held-out training examples: {len(reference)}, eval examples: {len(data.examples)}, "
          f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}, int8 kernel exact at 8 bits: {eight == 8}")
    print(f"{'variant':<58} {'acc':>7} {'points':>7} {'KL held-out':>12} {'agree':>7} {'weights':>8} {'latency':>8}")
    for name, row in rows.items():
        print(f"{name:<58} {row['accuracy']:7.4f} {(row['accuracy'] - base['accuracy']) * 100:+7.2f} "
              f"{row['held_out_kl']:12.2e} {row['held_out_agreement']:7.4f} "
              f"{base['linear_weight_bytes'] / row['linear_weight_bytes']:7.2f}x "
              f"{base['latency_ms'] / row['latency_ms']:7.2f}x")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
