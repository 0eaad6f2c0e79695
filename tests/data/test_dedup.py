"""`leantrain data dedup`: acceptance on planted duplicates, determinism, formats, errors."""
from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data_helpers import write_rows

from leantrain.cli import main
from leantrain.data.commands import dedup
from leantrain.data.sources import read_rows

NEAR = 0.7  # one word changed in a 30+ word row keeps word-3-shingle Jaccard >= 25/31 = 0.81
FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in string.ascii_letters}


def random_row(rng: random.Random, n_words: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(n_words))


def exact_variant(text: str, kind: int) -> str:
    """The same text as normalisation sees it: case, white space, NBSP, fullwidth letters."""
    return [
        lambda t: t.upper(),
        lambda t: t.title(),
        lambda t: "  " + t.replace(" ", "  \t") + " \n",
        lambda t: t.replace(" ", "\u00a0"),
        lambda t: "".join(FULLWIDTH.get(c, c) for c in t),
        lambda t: "".join(FULLWIDTH.get(c, c) for c in t.upper()).replace(" ", "\u3000"),
    ][kind % 6](text)


def near_variant(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    words[rng.randrange(len(words))] = "zz" + "".join(rng.choices(string.ascii_lowercase, k=6))
    return " ".join(words)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """2000 distinct rows, 300 exact and 300 near duplicates, each placed after its original."""
    rng = random.Random(1234)
    originals = [random_row(rng, rng.randint(20, 40)) for _ in range(2000)]
    long_rows = [i for i, t in enumerate(originals) if len(t.split(" ")) >= 30]
    chosen = rng.sample(long_rows, 600)
    keyed = [(float(i), {"id": f"o{i}", "text": t}) for i, t in enumerate(originals)]
    for n, i in enumerate(chosen):
        copy = exact_variant(originals[i], n) if n < 300 else near_variant(originals[i], rng)
        keyed.append((rng.uniform(i + 0.5, 2000), {"id": f"{'e' if n < 300 else 'n'}{i}", "text": copy}))
    rows = [row for _, row in sorted(keyed, key=lambda kv: kv[0])]
    path = write_rows(tmp_path_factory.mktemp("planted") / "planted.csv", rows)
    return {"path": path, "rows": rows, "originals": set(chosen)}


def test_dedup_removes_planted_duplicates_and_keeps_distinct_rows(planted, tmp_path):
    out = tmp_path / "kept.csv"
    report = dedup(planted["path"], out, "text", near=NEAR)
    kept = {r["id"] for r in read_rows(out)}
    exact_removed = sum(1 for r in planted["rows"] if r["id"][0] == "e" and r["id"] not in kept)
    near_removed = sum(1 for r in planted["rows"] if r["id"][0] == "n" and r["id"] not in kept)
    distinct_removed = sum(1 for r in planted["rows"] if r["id"][0] == "o" and r["id"] not in kept)
    assert exact_removed / 300 >= 0.95, exact_removed
    assert near_removed / 300 >= 0.95, near_removed
    assert distinct_removed / 2000 < 0.01, distinct_removed
    assert all(f"o{i}" in kept for i in planted["originals"])  # the first occurrence is the one kept
    assert report["input_rows"] == 2600 and report["kept_rows"] == len(kept)
    assert report["exact_duplicates"] + report["near_duplicates"] == 2600 - len(kept) - report["filtered"]
    assert report["exact_duplicates"] >= 285 and report["near_duplicates"] >= 285


def test_dedup_is_deterministic(planted, tmp_path):
    first = dedup(planted["path"], tmp_path / "a.csv", "text", near=NEAR)
    second = dedup(planted["path"], tmp_path / "b.csv", "text", near=NEAR)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    drop = {"output", "seconds"}
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in second.items() if k not in drop}
    kept = [r["id"] for r in read_rows(tmp_path / "a.csv")]
    assert kept == [r["id"] for r in planted["rows"] if r["id"] in set(kept)]  # input order preserved


# ------------------------------------------------------------------ the command


def small_rows() -> list[dict]:
    rng = random.Random(5)
    base = [random_row(rng, 25) for _ in range(30)]
    rows = [{"id": i, "text": t, "score": i / 2} for i, t in enumerate(base)]
    rows += [
        {"id": 100, "text": base[2].upper(), "score": 0.0},
        {"id": 101, "text": near_variant(base[3], rng), "score": 0.0},
        {"id": 102, "text": "", "score": 0.0},
    ]
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_command_writes_kept_rows_in_the_input_format_and_a_report(tmp_path, capsys, suffix):
    rows = small_rows()
    src = write_rows(tmp_path / f"in{suffix}", rows)
    out = tmp_path / f"out{suffix}"
    assert main(["data", "dedup", str(src), "--text-column", "text", "--near", "0.7", "--output", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "kept 30" in printed[0] and "1 exact" in printed[0] and "1 near" in printed[0]

    kept = read_rows(out)
    expected = [r for r in rows if r["id"] < 100]
    if suffix == ".csv":
        expected = [{k: str(v) for k, v in r.items()} for r in expected]  # CSV reads back as text
    assert kept == expected  # same columns, same values, same order
    if suffix == ".parquet":
        assert pq.read_schema(out).names == ["id", "text", "score"]

    report = json.loads(Path(f"{out}.report.json").read_text(encoding="utf-8"))
    assert {k: report[k] for k in ("input_rows", "exact_duplicates", "near_duplicates", "filtered", "kept_rows")} == {
        "input_rows": 33, "exact_duplicates": 1, "near_duplicates": 1, "filtered": 1, "kept_rows": 30,
    }
    assert report["removed_by_reason"] == {"exact_duplicate": 1, "near_duplicate": 1, "empty": 1}
    assert report["examples"]["exact_duplicate"] == [rows[30]["text"]]


def test_no_exact_and_near_off_keep_every_duplicate(tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", small_rows())
    out = tmp_path / "out.jsonl"
    assert main(["data", "dedup", str(src), "--no-exact", "--near", "off", "--output", str(out)]) == 0
    report = json.loads(Path(f"{out}.report.json").read_text(encoding="utf-8"))
    assert (report["exact_duplicates"], report["near_duplicates"], report["kept_rows"]) == (0, 0, 32)
    assert report["settings"]["exact_dedup"] is False and report["settings"]["near_dedup"] is None


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["absent.csv", "--output", "o.csv"], ["absent.csv", "not found"]),
        (["in.jsonl", "--text-column", "body", "--output", "o.csv"], ["in.jsonl", "missing column 'body'"]),
        (["in.jsonl", "--near", "1.5", "--output", "o.csv"], ["--near 1.5", "between 0 and 1"]),
        (["in.jsonl", "--near", "lots", "--output", "o.csv"], ["--near 'lots'"]),
        (["in.jsonl", "--output", "o.xlsx"], ["o.xlsx", "unsupported output format"]),
        (["in.jsonl", "--output", "in.jsonl"], ["in.jsonl", "must differ from the input"]),
    ],
    ids=["missing input", "missing column", "near out of range", "near not a number", "bad output format", "output is input"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "in.jsonl", small_rows())
    before = (tmp_path / "in.jsonl").read_bytes()
    assert main(["data", "dedup", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(f in err[0] for f in fragments), err
    assert (tmp_path / "in.jsonl").read_bytes() == before
    assert not (tmp_path / "o.csv").exists()


def test_command_in_a_real_process(tmp_path):
    write_rows(tmp_path / "in.csv", small_rows())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, "-m", "leantrain", "data", "dedup", "in.csv", "--output", "out.parquet"],
                        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.strip().splitlines()) == 1 and (tmp_path / "out.parquet.report.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "leantrain", "data", "dedup", "missing.csv", "--output", "o.csv"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "leantrain: error: data file not found: missing.csv"
