"""Data problems as a user meets them: `leantrain train` / `leantrain predict` in a subprocess.

Each must exit with code 2 and one clear line on stderr naming the file and the problem,
with no traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

# case -> (files to write {name: text}, recipe data-section overrides, fragments of the error line)
CASES = {
    "missing file": ({}, {"train": "absent.csv"}, ["absent.csv", "not found"]),
    "missing label column": (
        {"nolabel.csv": "text,category\nhello,a\nworld,b\n"},
        {"train": "nolabel.csv"},
        ["nolabel.csv", "missing column 'label'", "text, category"],
    ),
    "missing text column": (
        {"notext.jsonl": '{"body": "x", "label": "a"}\n{"body": "y", "label": "b"}\n'},
        {"train": "notext.jsonl"},
        ["notext.jsonl", "missing column 'text'", "body"],
    ),
    "empty file": ({"empty.csv": ""}, {"train": "empty.csv"}, ["empty.csv", "empty"]),
    "header only": ({"header.csv": "text,label\n"}, {"train": "header.csv"}, ["header.csv", "no rows"]),
    "one class": (
        {"one.csv": "text,label\n" + "".join(f"row {i},spam\n" for i in range(20))},
        {"train": "one.csv"},
        ["one.csv", "only one class", "'spam'"],
    ),
    "eval label not in train": (
        {
            "train.csv": "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(20)),
            "eval.csv": "text,label\nfoo,a\nbar,c\n",
        },
        {"train": "train.csv", "eval": "eval.csv"},
        ["eval.csv", "'c'", "never appears in the training data"],
    ),
    "missing eval file": (
        {"train.csv": "text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(20))},
        {"train": "train.csv", "eval": "absent_eval.csv"},
        ["absent_eval.csv", "not found"],
    ),
    "unsupported format": ({"data.xlsx": "text,label\n"}, {"train": "data.xlsx"}, ["data.xlsx", "unsupported format", ".csv"]),
    "malformed jsonl": ({"bad.jsonl": '{"text": "a", "label": \n'}, {"train": "bad.jsonl"}, ["bad.jsonl", "cannot read"]),
}

# Concurrent subprocesses each using every core would oversubscribe the CPU (OpenMP
# threads spin-wait on each other): one compute thread per child process.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leantrain", *args], cwd=cwd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_bert_dir):
    """Run every failing command once, concurrently (each process pays torch's import)."""
    commands = {}
    for case, (files, data, _) in CASES.items():
        folder = tmp_path_factory.mktemp(case.replace(" ", "_"))
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        recipe = {
            "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
            "data": {"max_length": 16, "eval_fraction": 0.2, **data},
            "train": {"epochs": 1, "batch_size": 4},
            "output": {"dir": str(folder / "run")},
        }
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        commands[case] = (["train", str(path)], folder)
    folder = tmp_path_factory.mktemp("predict")
    (folder / "inputs.txt").write_text("hello\n", encoding="utf-8")
    commands["predict: no run"] = (["predict", str(folder / "no_such_run"), str(folder / "inputs.txt")], folder)
    commands["predict: no input"] = (["predict", str(folder / "no_such_run"), str(folder / "absent.csv")], folder)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case: pool.submit(run_cli, *args, cwd=cwd) for case, (args, cwd) in commands.items()}
        return {case: f.result() for case, f in futures.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_data_error_exits_2_with_one_line_naming_file_and_problem(results, case):
    assert_one_line_error(results[case], *CASES[case][2])


def test_predict_on_a_directory_that_is_not_a_run(results):
    assert_one_line_error(results["predict: no run"], "no_such_run", "not a leantrain run")


def test_predict_with_missing_input_file(results):
    assert_one_line_error(results["predict: no input"], "absent.csv", "not found")



def test_non_utf8_csv_is_a_one_line_error(tmp_path, tiny_bert_dir):
    import subprocess
    import sys

    data = tmp_path / "latin1.csv"
    data.write_bytes(b"text,label\ncaf\xe9 au lait,a\nhello,b\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: {tiny_bert_dir}, from_scratch: true}}\ndata: {{train: {data}}}\n")
    done = subprocess.run([sys.executable, "-m", "leantrain", "train", str(recipe), "--no-smoke", "--quiet"],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1
    assert str(data) in lines[0] and "UTF8" in lines[0].replace("-", "").upper()
