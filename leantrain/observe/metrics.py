"""metrics.jsonl (the run's source of truth) plus a human-facing progress display.

On a terminal a tqdm bar shows loss, throughput and ETA; otherwise (CI, a log file) a
plain line is printed at every logged step, so logs stay readable.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from leantrain.observe.memory import peak_rss_bytes


# Recorded for reports and the dashboard, left out of the one-line progress display.
QUIET_FIELDS = ("event", "wall_seconds", "total_steps", "train_seconds", "peak_rss_bytes", "cpu_utilization",
                "data_wait_fraction")


class MetricsLog:
    def __init__(self, path: Path, total_steps: int, show_progress: bool = True, stream=None, sinks=()):
        self.path = Path(path)
        # Other places the same records go (TensorBoard, MLflow); see observe/sinks.py.
        self.sinks = list(sinks)
        self.cpu_mark = (time.perf_counter(), _cpu_seconds())
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
        if event.get("event") == "train":
            record.update(self._progress(state))
        elif event.get("event") == "eval":  # what reaching this quality cost in training time
            record["train_seconds"] = round(state.train_seconds, 3)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for sink in self.sinks:
            sink.write(record)
        self._show(record, state)
        return record

    def _progress(self, state) -> dict:
        """What a live view needs beside the loss: throughput, time (so dollars), data
        waits, utilization and memory so far, and how far the run is."""
        now, cpu = time.perf_counter(), _cpu_seconds()
        wall = now - self.cpu_mark[0]
        threads = max(1, _torch_threads())
        utilization = (cpu - self.cpu_mark[1]) / (wall * threads) if wall > 0 else None
        self.cpu_mark = (now, cpu)
        progress = {"total_steps": self.total_steps, "train_seconds": round(state.train_seconds, 3),
                    "peak_rss_bytes": peak_rss_bytes()}
        if state.train_seconds > 0:
            progress["samples_per_second"] = round(state.samples_seen / state.train_seconds, 3)
            progress["data_wait_fraction"] = round(state.data_wait_seconds / state.train_seconds, 4)
        if utilization is not None:
            progress["cpu_utilization"] = round(min(utilization, 1.0), 3)
        return progress

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
            if k not in QUIET_FIELDS
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
        for sink in self.sinks:
            sink.close()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
