"""The `leantrain` command: parse arguments, call the library, print. No logic lives here."""
from __future__ import annotations

import argparse
import json
import sys

from leantrain.errors import LeantrainError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leantrain", description="Fine-tune cheaply, and see what it cost.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train as a recipe says")
    train.add_argument("recipe")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a recipe value (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no progress output")

    predict = sub.add_parser("predict", help="predict with a trained run, one JSON line per input")
    predict.add_argument("run_dir")
    predict.add_argument("input", help="CSV/JSONL/Parquet (text column) or a text file, one input per line")
    predict.add_argument("--text-column", default="text")
    predict.add_argument("--output", help="write JSON lines here instead of stdout")

    recipe = sub.add_parser("recipe", help="validate a recipe, or print the recipe reference")
    recipe.add_argument("recipe", nargs="?")
    recipe.add_argument("--set", dest="overrides", action="append", default=[])
    recipe.add_argument("--reference", action="store_true", help="print every key with its default and meaning")
    return parser


def _train(args) -> int:
    from leantrain.engine.run import describe_result, train

    result = train(args.recipe, overrides=args.overrides, show_progress=not args.quiet)
    print(describe_result(result.summary))
    print(f"run directory: {result.run_dir}")
    return 0


def _predict(args) -> int:
    from leantrain.predict import predict, read_inputs

    texts = read_inputs(args.input, args.text_column)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for record in predict(args.run_dir, texts):
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


COMMANDS = {"train": _train, "predict": _predict, "recipe": _recipe}


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
