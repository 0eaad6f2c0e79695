"""metrics.jsonl (the run's source of truth) plus a human-facing progress display.

On a terminal a tqdm bar shows loss, throughput and ETA; otherwise (CI, a log file) a
plain line is printed at every logged step, so logs stay readable.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLog:
    def __init__(self, path: Path, total_steps: int, show_progress: bool = True, stream=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")
        self.total_steps = total_steps
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self.bar = None
        self.quiet = not show_progress
        if show_progress and self.stream.isatty():
            self.bar = tqdm(total=total_steps, unit="step", file=self.stream, dynamic_ncols=True)

    def write(self, event: dict, state) -> dict:
        wall = time.perf_counter() - self.started
        record = {"step": state.step, "epoch": state.epoch, "wall_seconds": round(wall, 3), **event}
        if event.get("event") == "train" and state.train_seconds > 0:
            record["samples_per_second"] = round(state.samples_seen / state.train_seconds, 3)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self._show(record, state)
        return record

    def _show(self, record: dict, state) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.n = state.step
            if record["event"] == "train":
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", sps=record.get("samples_per_second"))
            self.bar.refresh()
            return
        fields = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if k not in ("event", "wall_seconds")
        )
        eta = ""
        if record["event"] == "train" and state.step:
            remaining = state.train_seconds / state.step * (self.total_steps - state.step)
            eta = f" eta={remaining:.0f}s"
        print(f"[{record['event']}] {fields}{eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()
