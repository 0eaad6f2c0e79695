"""Progress output of `leantrain train` when stderr is not a terminal (CI, log files)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from testdata import make_topic_rows, write_csv

# Concurrent subprocesses each using every core would oversubscribe the CPU (OpenMP
# threads spin-wait on each other): one compute thread per child process.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def topics_csv(path: Path, n: int, seed: int = 0) -> Path:
    return write_csv(path, make_topic_rows(n, seed))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_bert_dir):
    """One normal and one --quiet `leantrain train`, run once for the module."""
    tmp_path = tmp_path_factory.mktemp("progress")
    topic_csv = topics_csv(tmp_path / "topics.csv", 120)
    recipe = {
        "model": {"name_or_path": str(tiny_bert_dir), "from_scratch": True},
        "data": {"train": str(topic_csv), "eval_fraction": 0.25, "max_length": 32},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "log_every": 3},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")

    def train(name, *flags):
        # stdout and stderr are pipes: not terminals
        return subprocess.run(
            [sys.executable, "-m", "leantrain", "train", str(path), "--set", f"output.dir={tmp_path / name}", *flags],
            capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=600,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        loud, quiet = pool.map(lambda args: train(*args), [("loud",), ("quiet", "--quiet")])
    return loud, quiet


def test_plain_periodic_lines_with_loss_and_eta(outputs):
    loud, _ = outputs
    assert loud.returncode == 0, loud.stderr
    assert "\r" not in loud.stderr  # no progress bar redraws
    train_lines = [line for line in loud.stderr.splitlines() if line.startswith("[train]")]
    # 90 training rows / batch 8 = 12 steps per epoch, 24 steps, a line every 3 steps
    assert len(train_lines) == 8
    steps = []
    for line in train_lines:
        assert re.search(r"\bloss=\d", line), line
        eta = re.search(r"\beta=(\d+)s\b", line)
        assert eta, line
        steps.append(int(re.search(r"\bstep=(\d+)", line).group(1)))
    assert steps == list(range(3, 25, 3))
    assert train_lines[-1].endswith("eta=0s")
    assert any(line.startswith("[eval]") and "accuracy=" in line for line in loud.stderr.splitlines())
    assert "status=completed" in loud.stdout


def test_quiet_prints_no_progress(outputs):
    loud, quiet = outputs
    assert quiet.returncode == 0, quiet.stderr
    assert "[train]" not in quiet.stderr and "[eval]" not in quiet.stderr
    assert "loss=" not in quiet.stderr and "eta=" not in quiet.stderr
    assert "\r" not in quiet.stderr
    assert "status=completed" in quiet.stdout  # the result itself is still reported
    assert "run directory:" in quiet.stdout
