"""The `leantrain` command: parse arguments, call the library, print. No logic lives here."""
from __future__ import annotations

import argparse
import json
import os
import sys

from leantrain.errors import LeantrainError, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leantrain", description="Fine-tune cheaply, and see what it cost.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train as a recipe says")
    train.add_argument("recipe")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a recipe value (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue from the newest valid checkpoint of the run directory (auto) or from PATH")
    train.add_argument("--no-smoke", action="store_true", help="skip the smoke test that runs before training")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="train on N processes (devices) of this machine through torchrun (DDP)")

    smoke = sub.add_parser("smoke", help="a one-minute check of a recipe before paying for the run")
    smoke.add_argument("recipe")
    smoke.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")

    predict = sub.add_parser("predict", help="predict with a trained run, one JSON line per input")
    predict.add_argument("run_dir")
    predict.add_argument("input", nargs="?", help="CSV/JSONL/Parquet (text column) or a text file, one input per line")
    predict.add_argument("--interactive", action="store_true", help="chat: read a user turn per line from stdin, print each reply")
    predict.add_argument("--max-new-tokens", type=int, default=None, help="longest generated reply (causal LM)")
    predict.add_argument("--text-column", default="text")
    predict.add_argument("--output", help="write JSON lines here instead of stdout")

    recipe = sub.add_parser("recipe", help="validate a recipe, or print the recipe reference")
    recipe.add_argument("recipe", nargs="?")
    recipe.add_argument("--set", dest="overrides", action="append", default=[])
    recipe.add_argument("--reference", action="store_true", help="print every key with its default and meaning")

    data = sub.add_parser("data", help="deduplicate a data file, or prepare (tokenize and cache) a recipe's data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dedup = data_sub.add_parser("dedup", help="drop exact and near duplicates and junk rows; write the rest and a report")
    dedup.add_argument("input", help="CSV/JSONL/Parquet, a folder of text files, or a saved `datasets` folder")
    dedup.add_argument("--text-column", default="text")
    dedup.add_argument("--near", default="0.8", metavar="THRESHOLD",
                       help="word-shingle Jaccard at or above which a row is a near duplicate (default 0.8; 0 or off disables)")
    dedup.add_argument("--no-exact", action="store_true", help="keep exact duplicates")
    dedup.add_argument("--output", required=True, help="where the kept rows go (.csv/.jsonl/.parquet); the report goes to OUTPUT.report.json")
    prepare = data_sub.add_parser("prepare", help="read, curate, split and tokenize a recipe's data into the cache; print the stats")
    prepare.add_argument("recipe")
    prepare.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    for module in _plugin_commands():
        COMMANDS.update(module.register(sub))
    return parser


def _plugin_commands():
    """Command modules in ``leantrain/commands/``: each has ``register(subparsers)`` that
    adds its parsers and returns ``{command name: handler(args) -> exit code}``. A new
    command is a new file there; this module does not change."""
    import importlib
    import pkgutil

    import leantrain.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        yield importlib.import_module(f"leantrain.commands.{info.name}")


# Exit codes by final status: a preempted run exits like the signal that stopped it.
STATUS_EXIT = {"completed": 0, "early_stopped": 0, "budget_exhausted": 0, "diverged": 3, "failed": 1}


def _train(args) -> int:
    import signal

    from leantrain.engine.run import describe_result, train

    if not args.no_smoke:
        _smoke(args)
    if args.nproc is not None and "LOCAL_RANK" not in os.environ:
        from leantrain.launch.torchrun import train_with_torchrun

        return train_with_torchrun(args.recipe, args.nproc, args.overrides, args.resume, args.quiet)
    result = train(args.recipe, overrides=args.overrides, resume=args.resume, show_progress=not args.quiet)
    summary = result.summary
    print(describe_result(summary))
    print(f"run directory: {result.run_dir}")
    if summary["status"] == "preempted":
        return 128 + int(getattr(signal, summary.get("signal") or "SIGTERM"))
    return STATUS_EXIT.get(summary["status"], 1)


def _smoke(args) -> int:
    from leantrain.smoke import run_smoke

    print(f"smoke test of {args.recipe}:", flush=True)
    run_smoke(args.recipe, args.overrides)
    print("smoke test passed", flush=True)
    return 0


def _predict(args) -> int:
    from leantrain.predict import chat, predict, read_inputs

    if args.interactive:
        chat(args.run_dir, sys.stdin, lambda reply: print(reply, flush=True), args.max_new_tokens or 128)
        return 0
    if not args.input:
        raise UserError("predict: give an input file, or --interactive to chat")
    texts = read_inputs(args.input, args.text_column)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for record in predict(args.run_dir, texts, max_new_tokens=args.max_new_tokens):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _recipe(args) -> int:
    from leantrain.recipe import load_recipe, reference_markdown

    if args.reference or not args.recipe:
        print(reference_markdown(), end="")
        return 0
    print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
    return 0


def _data(args) -> int:
    from leantrain.data.commands import run

    return run(args)


COMMANDS = {"train": _train, "smoke": _smoke, "predict": _predict, "recipe": _recipe, "data": _data}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LeantrainError as exc:
        if args.debug:
            raise
        print(f"leantrain: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("leantrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
