"""What the tokenize-once cache saves: preparing the demo data cold vs warm, side by side.

"Prepare" is ``load_text_data`` on the demo recipe's data section (read, [curate,] split,
tokenize or read back from the cache), timed in one process after an untimed warm-up run
so that library imports are charged to neither side. Cold runs each get an empty cache
folder; the warm run right after reuses the entry the cold run wrote. Best and median
of ``--repeats`` cold/warm pairs are shown; the acceptance uses the best of each (as
``timeit`` does: on a shared machine the slower runs measure the other processes).

    .venv/bin/python bench/data_cache.py
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DEMO_CSV = ROOT / "data/demo/fortunes.csv"
RECIPE = ROOT / "examples/demo.yaml"
TARGET_RATIO = 10.0
SETTINGS = {"demo recipe (no curation)": [], "demo recipe + curate: true": ["data.curate=true"]}
SCALE = 10  # an extra, informative row: the demo rows repeated (numbered) to show how the gap grows


def scaled_copy(folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    table = pa_csv.read_csv(DEMO_CSV)
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    rows = {"text": [f"{t} ({k})" for k in range(SCALE) for t in texts], "label": labels * SCALE}
    path = folder / f"fortunes_x{SCALE}.csv"
    pa_csv.write_csv(pa.table(rows), path)
    return path


def ensure_demo_data() -> None:
    if not DEMO_CSV.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples/fortunes.py"), "--output", str(DEMO_CSV)], check=True)


def count_tokenizer_calls(tokenizer) -> list[int]:
    """Count calls of the tokenizer (class-level patch: ``tok(...)`` looks ``__call__`` up on the type)."""
    calls = [0]
    cls, original = type(tokenizer), type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    cls.__call__ = counting
    return calls


def measure(overrides: list[str], tokenizer, calls: list[int], repeats: int) -> dict:
    from leantrain.data.text import load_text_data
    from leantrain.recipe import load_recipe

    cold, warm, warm_calls = [], [], 0
    # Cold and warm runs alternate, so load from other processes on the machine hits both alike.
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            recipe = load_recipe(RECIPE, overrides + [f"data.cache_dir={cache_dir}"])

            def prepare():
                gc.collect()  # start each timed run without the previous run's garbage
                started = time.perf_counter()
                data = load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path)
                return time.perf_counter() - started, data

            seconds, first = prepare()
            assert not first.stats["cache_hit"]
            cold.append(seconds)
            before = calls[0]
            seconds, again = prepare()
            warm_calls += calls[0] - before
            assert again.stats["cache_hit"] and again.train == first.train and again.eval == first.eval
            warm.append(seconds)
    rows = first.stats["rows_train"] + first.stats["rows_eval"]
    return {"cold": cold, "warm": warm, "warm_calls": warm_calls, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    ensure_demo_data()
    sys.path.insert(0, str(ROOT))
    from leantrain.data.text import load_text_data
    from leantrain.models import load_tokenizer
    from leantrain.recipe import load_recipe

    recipe = load_recipe(RECIPE, ["data.cache=false", "data.curate=true"])
    tokenizer = load_tokenizer(recipe.model)
    load_text_data(recipe.data, recipe.model.task, tokenizer, recipe.train.seed, recipe.resolve_path)  # warm-up: imports
    calls = count_tokenizer_calls(tokenizer)

    print(f"data: {DEMO_CSV.relative_to(ROOT)}, recipe: {RECIPE.relative_to(ROOT)}, {args.repeats} cold/warm pairs")
    print("| setting | examples | cold prepare (s) best / median | warm prepare (s) best / median | warm speed-up best / median | tokenizer calls when warm |")
    print("|---|---|---|---|---|---|")
    ok = True
    scratch = tempfile.TemporaryDirectory()
    settings = {**SETTINGS, f"demo rows x{SCALE} (not judged)": [f"data.train={scaled_copy(Path(scratch.name))}"]}
    for name, overrides in settings.items():
        r = measure(overrides, tokenizer, calls, args.repeats)
        best = min(r["cold"]) / min(r["warm"])
        median = statistics.median(r["cold"]) / statistics.median(r["warm"])
        if name in SETTINGS:
            ok &= best >= TARGET_RATIO and r["warm_calls"] == 0
        print(
            f"| {name} | {r['rows']} | {min(r['cold']):.3f} / {statistics.median(r['cold']):.3f} | "
            f"{min(r['warm']):.4f} / {statistics.median(r['warm']):.4f} | {best:.1f}x / {median:.1f}x | {r['warm_calls']} |"
        )
    scratch.cleanup()
    print(f"acceptance (best-of-{args.repeats} warm >= {TARGET_RATIO:.0f}x faster than best cold, no tokenization when warm): "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
