"""Preemption: turn SIGTERM/SIGINT into "checkpoint at the next safe point, then stop".

Spot instances get a SIGTERM shortly before they vanish. The first signal only sets a
flag, which the loop checks after every step and between evaluation batches; the run
then checkpoints and exits with status ``preempted`` (exit code 128 + signal number).
A second signal aborts at once: checkpoints are atomic, so the previous one survives.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

WATCHED = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Raised at a safe point when a stop signal arrived (e.g. in the middle of evaluation)."""


class StopSignals:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum else None

    def check(self) -> None:
        """Raise Preempted if a stop signal arrived: call at safe points."""
        if self.signum is not None:
            raise Preempted(self.name)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            print(f"leantrain: second {signal.Signals(signum).name}: aborting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"leantrain: {signal.Signals(signum).name} received: checkpointing at the next safe point "
              "(send it again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in WATCHED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
