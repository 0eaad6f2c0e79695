"""A `leantrain train` child process, watched through its metrics file.

Why one helper: `ablate` (a rung) and `tune` (a trial) both run a configuration as an
ordinary training process, so it gets the same engine as any run (checkpoints, ledger,
signals) and no memory or speed carried over from the previous one, and both stop it
cleanly by SIGTERM (the engine checkpoints and exits) as soon as an evaluation says so.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from leantrain.observe.runlog import TailedFile

PR_SET_PDEATHSIG = 1
EVAL_EVENTS = ("eval", "final_eval")


def train_command(recipe: str, sets: list[str], *flags: str) -> list[str]:
    """``leantrain train RECIPE`` in this interpreter, quiet and without the smoke test
    (the caller already checked the recipe once), with ``--set`` for each of ``sets``."""
    cmd = [sys.executable, "-m", "leantrain", "train", recipe, "--quiet", "--no-smoke", *flags]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the child then outlives a killed parent
        pass


def watch_training(cmd: list[str], log_path: Path, metrics_path: Path, should_stop: Callable[[dict], bool],
                   *, die_with_parent: bool = False, append_log: bool = False, poll_seconds: float = 0.3) -> tuple[int, bool]:
    """Run ``cmd`` (output to ``log_path``) and hand each new evaluation line of
    ``metrics_path`` to ``should_stop``, in order; the first True stops the run by SIGTERM.
    Lines written after the process exits are read too (the last evaluation counts).

    ``die_with_parent``: the child gets SIGTERM when this process dies (Linux), so a killed
    search leaves a checkpoint behind instead of an orphan still training.
    Returns (exit code, whether this stopped it: False when it had already exited)."""
    seen, stopped, metrics = 0, False, TailedFile(metrics_path)
    with open(log_path, "a" if append_log else "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=_die_with_parent if die_with_parent else None)
        while True:
            done = proc.poll() is not None
            lines = [r for r in metrics.read() if r.get("event") in EVAL_EVENTS]
            for line in lines[seen:]:
                if should_stop(line) and not stopped and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
            seen = len(lines)
            if done:
                return proc.returncode, stopped
            time.sleep(poll_seconds)
