"""``leantrain train RECIPE --nproc N``: torchrun started for the user, on this machine.

torchrun (``python -m torch.distributed.run``) is the engine: it starts N copies of
``python -m leantrain train``, sets their ranks and watches them. This module only
builds its command line, passes stop signals on (so a SIGTERM to ``leantrain`` reaches
every rank, which then checkpoint together) and turns the run's outcome back into
leantrain's exit code: torchrun itself reports any worker that exited non-zero, a
preempted one included, as a failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from leantrain.errors import UserError


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The single-node torchrun command that runs ``leantrain train`` on ``nproc`` ranks.
    ``--standalone`` picks a free rendezvous port, so several jobs can share a machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--local-ranks-filter=0",  # one rank prints; the others would repeat it
            "-m", "leantrain", "train", *train_args]


def exit_code_of(run_dir: Path, torchrun_code: int) -> int:
    """leantrain's exit code for the run torchrun just ended, read from its summary."""
    from leantrain.cli import STATUS_EXIT

    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return torchrun_code or 1
    if summary.get("status") == "preempted":
        return 128 + int(getattr(signal, summary.get("signal") or "SIGTERM"))
    return STATUS_EXIT.get(summary.get("status"), torchrun_code or 1)


def train_with_torchrun(recipe: str, nproc: int, overrides: list[str], resume: str | None, quiet: bool) -> int:
    from leantrain.recipe import load_recipe

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: the number of processes must be at least 1")
    run_dir = load_recipe(recipe, overrides).run_dir()
    summary = run_dir / "summary.json"
    before = summary.stat().st_mtime_ns if summary.is_file() else None
    args = [recipe, "--no-smoke", *(f"--set={item}" for item in overrides)]
    args += [f"--resume={resume}"] if resume else []
    args += ["--quiet"] if quiet else []
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; said here so it is not a warning
    print(f"leantrain: {' '.join(torchrun_command(nproc, args))}", file=sys.stderr, flush=True)
    # Its own session: a Ctrl-C in the terminal reaches the ranks once (through torchrun),
    # not twice (a second signal aborts a rank at once, before its checkpoint).
    process = subprocess.Popen(torchrun_command(nproc, args), env=env, start_new_session=True)
    previous = {sig: signal.signal(sig, lambda signum, frame: process.send_signal(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    fresh = summary.is_file() and summary.stat().st_mtime_ns != before
    return exit_code_of(run_dir, code) if fresh else (code or 1)
