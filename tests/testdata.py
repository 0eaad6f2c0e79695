"""Small labelled text data for tests: importable from any test module (tests/ is on sys.path)."""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOPIC_WORDS = {
    "sports": ["goal", "match", "team", "score", "league", "coach", "ball", "referee"],
    "food": ["bread", "cheese", "soup", "recipe", "oven", "spice", "dinner", "salad"],
    "tech": ["code", "server", "bug", "compiler", "network", "laptop", "kernel", "cloud"],
}
FILLER = ["the", "a", "today", "we", "saw", "really", "very", "and", "then", "about", "with"]


def make_topic_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic but learnable: each text mixes filler with words of its topic."""
    rng = random.Random(seed)
    topics = sorted(TOPIC_WORDS)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
        words += [rng.choice(TOPIC_WORDS[topic]) for _ in range(rng.randint(1, 3))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": topic})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as CSV, JSONL or Parquet, chosen by the suffix."""
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    return write_rows(path, rows)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Give a randomly initialised model dir the bundled tokenizer, so tests need no download."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "chat_template.jinja"):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())


def train_in_subprocesses(tmp_path_factory, cases: dict[str, tuple[str, dict]]) -> dict[str, subprocess.CompletedProcess]:
    """For each case's (train.jsonl text, recipe), `leantrain train recipe.yaml --no-smoke`
    in a folder of its own, as a user runs it: two at a time with one OpenMP thread each
    (processes each using every core would oversubscribe the CPU)."""
    import yaml

    folders = {}
    for case, (text, recipe) in cases.items():
        folder = folders[case] = tmp_path_factory.mktemp(case.replace(" ", "_"))
        (folder / "train.jsonl").write_text(text, encoding="utf-8")
        recipe = {**recipe, "output": {"dir": str(folder / "run")}}
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda folder: subprocess.run([sys.executable, "-m", "leantrain", "train", "recipe.yaml", "--no-smoke"], cwd=folder,
                                        capture_output=True, text=True, env=env, timeout=300)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run, folder) for case, folder in folders.items()}
        return {case: f.result() for case, f in futures.items()}


def assert_one_line_error(proc: subprocess.CompletedProcess, fragments) -> None:
    """How a user error reads: exit code 2 and one line on stderr holding every fragment."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
