"""Counters and outcome of a run: everything the loop advances, in one place.

Kept small and JSON-serialisable so a checkpoint can store it whole.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainState:
    step: int = 0                 # optimizer steps taken
    epoch: int = 0                # current epoch (0-based)
    batch_in_epoch: int = 0       # micro-batches consumed in the current epoch, over all ranks
    # Micro-batches per step (all ranks) the current epoch's order was formed with: a run
    # resumed on another number of ranks finishes the epoch in that order (0: not yet set).
    order_micro_batches: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0    # wall time spent in fit(), summed over resumes
    data_wait_seconds: float = 0.0
    skipped_steps: int = 0        # updates skipped for a NaN/Inf loss or gradient
    bad_steps_in_a_row: int = 0
    resumed_from: list[int] = field(default_factory=list)  # steps this run was resumed at
    status: str = "running"
    stop_reason: str | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**data)
