"""`leantrain data ...`: curation and preparation as standalone steps.

``dedup`` cleans a file once, outside any run, and leaves a report of what went (so a
user can check that real examples were not thrown away). ``prepare`` runs a recipe's data
section (read, curate, split, tokenize into the cache) so the tokenizing cost is paid
before renting the hardware that trains. The CLI only parses arguments; the work and the
printing live here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from leantrain.data.curate import CurateSettings, curate_texts
from leantrain.data.sources import FORMATS, open_source, write_table
from leantrain.errors import DataError, UserError


def report_path(output: str | Path) -> Path:
    """``out.csv`` -> ``out.csv.report.json`` (the output's full name, so nothing collides)."""
    return Path(f"{output}.report.json")


def parse_near(value: str | float | None) -> float | None:
    """``--near``: a Jaccard threshold in (0, 1]; 0, "off" or "none" disable near dedup."""
    if value is None or str(value).strip().lower() in ("0", "0.0", "off", "none", "no"):
        return None
    try:
        threshold = float(value)
    except ValueError:
        raise UserError(f"--near {value!r}: expected a number between 0 and 1 (0 or 'off' disables)") from None
    if not 0 < threshold <= 1:
        raise UserError(f"--near {value}: must be between 0 and 1 (0 or 'off' disables)")
    return threshold


def dedup(input: str | Path, output: str | Path, text_column: str = "text", near: float | None = 0.8, exact: bool = True) -> dict:
    """Write the kept rows of ``input`` to ``output`` (same columns), and the report beside it.

    Exact duplicates (after NFKC, case folding and white-space collapsing), near duplicates
    (word-shingle MinHash at Jaccard >= ``near``) and junk rows (empty, no letters) go;
    the first occurrence of a duplicate is kept, so the same input gives the same output.
    """
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise DataError(f"{output}: unsupported output format {output.suffix!r}; use one of {', '.join(sorted(FORMATS))}")
    source = open_source(input)
    if Path(str(input)).resolve() == output.resolve():
        raise UserError(f"{output}: --output must differ from the input (the input is kept as it is)")
    table = source.table(columns=[text_column])
    texts = table.column(text_column).to_pylist()
    missing = next((i for i, t in enumerate(texts) if t is None), None)
    if missing is not None:
        raise DataError(f"{source.name}: row {missing + 1} has no value in text column {text_column!r}")
    settings = CurateSettings(exact_dedup=exact, near_dedup=near, remove_eval_overlap=False)
    started = time.perf_counter()
    keep, report = curate_texts([str(t) for t in texts], settings)
    write_table(table.take(keep), output)
    result = {
        **report.to_dict(),
        "input": source.name,
        "output": str(output),
        "text_column": text_column,
        "settings": settings.model_dump(exclude={"enabled", "remove_eval_overlap"}),
        "seconds": round(time.perf_counter() - started, 3),
    }
    report_path(output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def dedup_summary(report: dict) -> str:
    return (
        f"{report['input']}: {report['input_rows']} rows, removed {report['exact_duplicates']} exact duplicates, "
        f"{report['near_duplicates']} near duplicates, {report['filtered']} filtered; kept {report['kept_rows']} "
        f"-> {report['output']} (report: {report_path(report['output'])})"
    )


def prepare(recipe_path: str | Path, overrides: list[str] | None = None) -> dict:
    """Run the recipe's data section exactly as `leantrain train` would; the data stats."""
    from leantrain.data.text import load_text_data
    from leantrain.models import load_tokenizer
    from leantrain.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    tokenizer = load_tokenizer(recipe.model)
    started = time.perf_counter()
    data = load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path)
    stats = {**data.stats, "prepare_seconds": round(time.perf_counter() - started, 3)}
    if data.label_names is not None:
        stats["label_names"] = data.label_names
    return stats


def prepare_summary(stats: dict) -> str:
    cache = "cache hit" if stats.get("cache_hit") else ("tokenized and cached" if stats.get("cache_key") else "tokenized (cache off)")
    return (
        f"prepared {stats['rows_train']} train + {stats['rows_eval']} eval examples from {stats['rows_in']} rows "
        f"({stats['duplicates_removed']} duplicates removed) in {stats['prepare_seconds']:.2f}s, {cache}"
    )


def run(args) -> int:
    """Entry point for `leantrain data` (``args`` from the CLI's parser)."""
    if args.data_command == "dedup":
        report = dedup(args.input, args.output, args.text_column, parse_near(args.near), exact=not args.no_exact)
        print(dedup_summary(report))
        return 0
    stats = prepare(args.recipe, args.overrides)
    print(prepare_summary(stats))
    print(json.dumps(stats, indent=2))
    return 0
