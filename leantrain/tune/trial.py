"""One trial of `leantrain tune`: an ordinary `leantrain train` process, watched.

Why a process per trial: the same engine as any run (checkpoints, ledger, signals),
peak memory and speed not carried over from the previous trial, and a clean stop by
SIGTERM (the engine checkpoints and exits) when the pruner or the target says stop.
The child gets SIGTERM when the search process dies (Linux ``PR_SET_PDEATHSIG``), so a
killed search leaves a checkpoint that the resumed search continues from.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from leantrain.ablate.runner import reached
from leantrain.observe.runlog import read_json, read_jsonl

PR_SET_PDEATHSIG = 1
OUTCOME_FILE = "outcome.json"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the child then outlives a killed search
        pass


@dataclass
class TrialOutcome:
    status: str                      # reached_target, completed, pruned, failed
    seconds: float                   # process wall time of every attempt, start-up included
    evals: list[dict] = field(default_factory=list)
    hit: dict | None = None          # the first eval line that met the target
    summary: dict = field(default_factory=dict)
    error: str | None = None


def attempts_seconds(run_dir: Path) -> float:
    """Wall seconds of earlier attempts of this trial (a search killed mid-trial): each
    attempt's start is logged; one without an end ran until its run directory last changed."""
    attempts: dict[float, float | None] = {}
    for record in read_jsonl(run_dir / "attempts.jsonl"):  # a start line, then an end line with its seconds
        attempts[record["started"]] = record.get("seconds", attempts.get(record["started"]))
    total = 0.0
    for started, seconds in attempts.items():
        if seconds is None:
            stamps = [p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file() and p.name != "attempts.jsonl"]
            seconds = max(0.0, max(stamps, default=started) - started)
        total += seconds
    return total


def _log_attempt(run_dir: Path, record: dict) -> None:
    with open(run_dir / "attempts.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def run_trial(recipe: str, sets: list[str], run_dir: Path, metric: str, higher_is_better: bool,
              target: float | None, on_eval: Callable[[dict], bool]) -> TrialOutcome:
    """Train ``recipe`` with ``sets`` in ``run_dir`` (resuming a checkpoint left there);
    ``on_eval(line)`` is called for each new evaluation and returns True to prune."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = attempts_seconds(run_dir)
    cmd = [sys.executable, "-m", "leantrain", "train", recipe, "--quiet", "--no-smoke", "--resume", "auto"]
    for item in sets:
        cmd += ["--set", item]
    started_wall, started = time.time(), time.perf_counter()
    _log_attempt(run_dir, {"started": started_wall})
    seen, evals, hit, status = 0, [], None, None
    with open(run_dir / "tune.log", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while True:
            done = proc.poll() is not None  # read once more after the exit: the last evaluation counts
            lines = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "eval" and metric in r]
            for line in lines[seen:]:
                evals.append(line)
                if target is not None and hit is None and reached(metric, line[metric], target):
                    hit, status = line, "reached_target"
                elif status is None and on_eval(line):
                    status = "pruned"
                if status and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # a clean stop: the engine checkpoints and exits
            seen = len(lines)
            if done:
                break
            time.sleep(0.3)
    seconds = time.perf_counter() - started
    _log_attempt(run_dir, {"started": started_wall, "seconds": seconds, "ended": True})
    total = earlier + seconds
    summary = read_json(run_dir / "summary.json")
    if status is None:
        if proc.returncode != 0 or not summary:
            tail = (run_dir / "tune.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            return TrialOutcome("failed", total, evals, error=tail[0] if tail else f"exit {proc.returncode}")
        status = "completed"
    outcome = TrialOutcome(status, total, evals, hit, summary)
    (run_dir / OUTCOME_FILE).write_text(json.dumps(asdict(outcome)), encoding="utf-8")
    return outcome


def finished_outcome(run_dir: Path) -> TrialOutcome | None:
    """The outcome of a trial already run with exactly these values (the sampler can draw
    the same point twice): reused, not paid for again."""
    found = read_json(run_dir / OUTCOME_FILE)
    return TrialOutcome(**found) if found else None
