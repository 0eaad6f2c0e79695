"""The terminal belongs to leantrain's own lines.

peft imports torchao when it is installed, and torchao announces on every start that
its optional CUDA kernels failed to load and that its pytree registrations are
deprecated. None of that is about the user's run; these tests run the commands a user
types first and fail on any such line, and check that a command which needs no model
(``leantrain recipe``) does not pay for importing the heavy optional libraries at all.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.yaml"
# Lines that third-party libraries print at import or start-up time.
NOISE = re.compile(r"Failed to load|_pytree|Warning|warnings\.warn|deprecat|^[WE]\d{4} ", re.IGNORECASE | re.MULTILINE)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _leantrain(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leantrain.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def _noise(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if NOISE.search(line)]


def test_recipe_command_is_quiet_and_imports_no_heavy_library(tmp_path):
    result = _leantrain("recipe", str(DEMO), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _noise(result) == []
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, io, contextlib\n"
         "from leantrain.cli import main\n"
         f"with contextlib.redirect_stdout(io.StringIO()): main(['recipe', {str(DEMO)!r}])\n"
         "print(' '.join(m for m in ('peft', 'torchao', 'transformers', 'datasets', 'matplotlib', 'tensorboard')"
         " if m in sys.modules))"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "", f"`leantrain recipe` imported: {probe.stdout.strip()}"


@pytest.mark.slow
def test_train_prints_no_library_noise(tmp_path, topic_csv):
    """The demo recipe (LoRA: peft, hence torchao) with its smoke test, two steps."""
    result = _leantrain(
        "train", str(DEMO), "--set", f"data.train={topic_csv}", "--set", "train.max_steps=2",
        "--set", f"output.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "smoke test passed" in result.stdout
    assert _noise(result) == []
