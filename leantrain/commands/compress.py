"""``leantrain compress RUN_DIR ... --output OUT``: a smaller, faster model and what it cost."""
from __future__ import annotations

QUANTIZE = ("int8", "int8-weight", "int4-weight")  # leantrain.compress.quantize.METHODS, without importing torch


def register(subparsers) -> dict:
    parser = subparsers.add_parser(
        "compress", help="distil, prune and/or quantize a trained run; measure size, latency and accuracy before/after")
    parser.add_argument("run_dir", help="a finished leantrain run directory (with model/)")
    parser.add_argument("--output", required=True, help="folder for model/ (safetensors) and compress.json")
    parser.add_argument("--quantize", choices=QUANTIZE,
                        help="int8: dynamic int8, inputs SmoothQuant-smoothed per layer from training batches (fast on CPU); "
                             "int8-weight / int4-weight: weight-only (torchao)")
    parser.add_argument("--prune", metavar="KIND:FRACTION",
                        help="ffn:0.3 (FFN neurons), heads:0.25 (attention heads) or magnitude:0.5 (single weights)")
    parser.add_argument("--importance", choices=("activation", "weight"), default="activation",
                        help="structured pruning score (default: activation, from a few training batches)")
    parser.add_argument("--recover-epochs", type=float, default=1.0,
                        help="fine-tune epochs after structured pruning (default 1; 0 skips recovery)")
    parser.add_argument("--recover-lr", type=float, default=5e-5, help="learning rate of the recovery fine-tune")
    parser.add_argument("--distill-into", metavar="RECIPE",
                        help="a student recipe with cuts.distill; its teacher is set to RUN_DIR")
    parser.add_argument("--recipe", help="the recipe the run was trained with (default: RUN_DIR/config.yaml)")
    parser.add_argument("--latency-batch", type=int, default=32, help="eval examples per timed forward (default 32)")
    parser.add_argument("--repeats", type=int, default=15, help="timed forwards per model (median reported)")
    parser.add_argument("--threads", type=int, help="torch CPU threads for the whole command")
    return {"compress": run}


def run(args) -> int:
    from leantrain.compress import compress

    report = compress(
        args.run_dir, args.output, quantize=args.quantize, prune=args.prune, distill_into=args.distill_into,
        recipe=args.recipe, importance=args.importance, recover_epochs=args.recover_epochs,
        recover_lr=args.recover_lr, latency_batch_size=args.latency_batch, repeats=args.repeats, threads=args.threads,
    )
    metric = "accuracy" if "accuracy" in report["eval_before"] else "loss"
    print(f"size       {report['size_bytes_before']:>12,} -> {report['size_bytes_after']:>12,} bytes "
          f"({report['size_ratio']}x smaller)")
    print(f"linear w.  {report['linear_weight_bytes_before']:>12,} -> {report['linear_weight_bytes_after']:>12,} bytes "
          f"({report['linear_weight_ratio']}x smaller)")
    print(f"latency    {report['latency_ms_before']:>12.1f} -> {report['latency_ms_after']:>12.1f} ms "
          f"({report['latency_ratio']}x faster, batch {report['latency_conditions']['batch_shape']})")
    print(f"{metric:<10} {report['eval_before'][metric]:>12.4f} -> {report['eval_after'][metric]:>12.4f}")
    print(f"model: {report['model']}  (load: leantrain.compress.load_compressed)")
    print(f"report: {args.output}/compress.json")
    return 0
