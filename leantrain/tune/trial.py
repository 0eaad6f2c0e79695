"""One trial of `leantrain tune`: an ordinary `leantrain train` process, watched
(leantrain/launch/watched.py says why a process per trial).

The child gets SIGTERM when the search process dies (Linux ``PR_SET_PDEATHSIG``), so a
killed search leaves a checkpoint that the resumed search continues from.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from leantrain.ablate.runner import reached
from leantrain.launch.watched import train_command, watch_training
from leantrain.observe.runlog import read_json, read_jsonl

OUTCOME_FILE = "outcome.json"


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


def run_trial(recipe: str, sets: list[str], run_dir: Path, metric: str, target: float | None,
              on_eval: Callable[[dict], bool]) -> TrialOutcome:
    """Train ``recipe`` with ``sets`` in ``run_dir`` (resuming a checkpoint left there);
    ``on_eval(line)`` is called for each new evaluation and returns True to prune."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = attempts_seconds(run_dir)
    started_wall, started = time.time(), time.perf_counter()
    _log_attempt(run_dir, {"started": started_wall})
    evals: list[dict] = []
    hit, status = None, None

    def should_stop(line: dict) -> bool:
        nonlocal hit, status
        if line.get("event") != "eval" or metric not in line:
            return False
        evals.append(line)
        if target is not None and hit is None and reached(metric, line[metric], target):
            hit, status = line, "reached_target"
        elif status is None and on_eval(line):
            status = "pruned"
        return status is not None

    returncode, _ = watch_training(train_command(recipe, sets, "--resume", "auto"), run_dir / "tune.log",
                                   run_dir / "metrics.jsonl", should_stop, die_with_parent=True, append_log=True)
    seconds = time.perf_counter() - started
    _log_attempt(run_dir, {"started": started_wall, "seconds": seconds, "ended": True})
    total = earlier + seconds
    summary = read_json(run_dir / "summary.json")
    if status is None:
        if returncode != 0 or not summary:
            tail = (run_dir / "tune.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            return TrialOutcome("failed", total, evals, error=tail[0] if tail else f"exit {returncode}")
        status = "completed"
    outcome = TrialOutcome(status, total, evals, hit, summary)
    (run_dir / OUTCOME_FILE).write_text(json.dumps(asdict(outcome)), encoding="utf-8")
    return outcome


def finished_outcome(run_dir: Path) -> TrialOutcome | None:
    """The outcome of a trial already run with exactly these values (the sampler can draw
    the same point twice): reused, not paid for again."""
    found = read_json(run_dir / OUTCOME_FILE)
    return TrialOutcome(**found) if found else None
