"""Preemption: turn SIGTERM/SIGINT into "checkpoint at the next safe point, then stop".

Spot instances get a SIGTERM shortly before they vanish. The first signal only sets a
flag, which the loop checks after every step and between evaluation batches; the run
then checkpoints and exits with status ``preempted`` (exit code 128 + signal number).
A second signal aborts at once: checkpoints are atomic, so the previous one survives.

Under torchrun a signal may reach one rank only (or the ranks at different moments).
``agree`` (set by the run) takes this rank's signal number and returns the largest over
all ranks; every rank calls ``check`` at the same safe points, so all of them stop at
the same step. A stop learnt from another rank is not this process's first signal: its
own SIGTERM arriving later still only asks for the checkpoint under way.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

WATCHED = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Raised at a safe point when a stop signal arrived (e.g. in the middle of evaluation)."""


class StopSignals:
    def __init__(self):
        self.signum: int | None = None       # a signal this process received
        self.relayed: int | None = None      # a signal another rank received
        self.agree: Callable[[int], int] | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return (self.signum or self.relayed) is not None

    @property
    def name(self) -> str | None:
        signum = self.signum or self.relayed
        return signal.Signals(signum).name if signum else None

    def check(self) -> None:
        """Raise Preempted if a stop signal arrived (on any rank): call at safe points,
        the same ones on every rank."""
        signum = self.signum or self.relayed or 0
        if self.agree is not None:
            signum = self.agree(signum)
            if signum and self.signum is None:
                self.relayed = signum
        if signum:
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
