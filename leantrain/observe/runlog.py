"""Reading a run directory back: metrics.jsonl, summary.json and the recipe's prices.

Shared by the report (after a run), the dashboard (during one) and the processes that watch a
run they started (`ablate`, `tune`), so all show the same figures. A run being written to
can end with a torn line; readers skip it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import yaml


def read_jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file; a missing file or a torn last line yields nothing."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


class TailedFile:
    """The JSON lines of a growing file, reading only what was appended since last time:
    the dashboard follows every run this way, and `ablate`/`tune` the run they watch."""

    def __init__(self, path: Path):
        self.path, self.offset, self.records, self.partial = path, 0, [], b""

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return self.records
        if size < self.offset:  # cut back (a resumed run rewrites it): start over
            self.offset, self.records, self.partial = 0, [], b""
        if size > self.offset:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = self.partial + f.read(size - self.offset)
            self.offset = size
            lines = chunk.split(b"\n")
            self.partial = lines.pop()  # an unfinished last line waits for its end
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    self.records.append(record)
        return self.records


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_config(run_dir: Path) -> dict:
    """The recipe the run used (config.yaml, written by ``train``), or {}."""
    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()


def train_dollars(record: dict, price_per_hour: float) -> float | None:
    """Dollars spent up to a train line: its own ``cost_usd`` when the run wrote one, else
    its training seconds (or, from older runs, its wall seconds) at the run's price."""
    if "cost_usd" in record:
        return float(record["cost_usd"])
    seconds = record.get("train_seconds", record.get("wall_seconds"))
    return None if seconds is None else seconds * price_per_hour / 3600


def run_view(run_dir: Path, records: list[dict] | None = None) -> dict:
    """Everything a report or a dashboard shows about one run, as plain JSON-able data."""
    run_dir = Path(run_dir)
    records = list(read_jsonl(run_dir / "metrics.jsonl")) if records is None else records
    summary = read_json(run_dir / "summary.json")
    config = read_config(run_dir)
    price = float((config.get("hardware") or {}).get("price_per_hour") or summary.get("price_per_hour") or 0.0)
    budget = config.get("budget") or {}
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") in ("eval", "final_eval")]
    for r in train:
        r["dollars"] = train_dollars(r, price)
    last = train[-1] if train else {}
    total_steps = last.get("total_steps") or (config.get("train") or {}).get("max_steps")
    spent = summary.get("cost_usd") if summary.get("cost_usd") is not None else last.get("dollars")
    projected = None
    if last.get("dollars") is not None and last.get("step") and total_steps:
        projected = last["dollars"] / last["step"] * total_steps
    if summary.get("status") and summary["status"] != "running":
        projected = spent
    try:
        quiet_for = max(0.0, time.time() - (run_dir / "metrics.jsonl").stat().st_mtime)
    except FileNotFoundError:
        quiet_for = None
    return {
        "name": run_dir.name,
        "seconds_since_update": quiet_for,  # a "running" run that stays quiet long was probably killed
        "path": str(run_dir),
        "status": summary.get("status") or ("running" if records else "starting"),
        "stop_reason": summary.get("stop_reason"),
        "step": last.get("step", 0),
        "total_steps": total_steps,
        "price_per_hour": price,
        "budget_usd": budget.get("max_usd"),
        "budget_hours": budget.get("max_hours"),
        "dollars": spent,
        "projected_dollars": projected,
        "samples_per_second": last.get("samples_per_second", summary.get("samples_per_second")),
        "data_wait_fraction": last.get("data_wait_fraction", summary.get("data_wait_fraction")),
        "cpu_utilization": last.get("cpu_utilization"),
        "peak_memory_bytes": summary.get("peak_memory_bytes"),
        "peak_memory_method": summary.get("peak_memory_method"),
        "memory_breakdown": (summary.get("extras") or {}).get("memory_breakdown"),
        "train": train,
        "eval": evals,
        "summary": summary,
    }
