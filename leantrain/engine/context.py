"""What one run shares between the loop, the task and the cuts.

Cuts receive this object in every hook: it is how a cut reads the device, the model, or
the number of micro-batches per step, without the loop knowing which cut wants what.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from leantrain.engine.distributed import Parallel
from leantrain.engine.signals import StopSignals
from leantrain.engine.state import TrainState


@dataclass
class RunContext:
    device: torch.device
    train: Any                                  # the recipe's TrainSection
    model_section: Any = None                   # the recipe's ModelSection (cuts check e.g. from_scratch)
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    state: TrainState = field(default_factory=TrainState)
    # Micro-batches in one optimizer step across all ranks: accumulation steps x world size.
    micro_batches_per_step: int = 1
    total_steps: int = 0
    batches_per_epoch: int = 0
    log: Callable[[dict], None] = lambda event: None
    extras: dict[str, Any] = field(default_factory=dict)  # per-run facts cuts report (summary)
    signals: StopSignals = field(default_factory=StopSignals)  # SIGTERM/SIGINT -> stop at a safe point
    tokenizer: Any = None                      # the model's tokenizer, when there is one
    # Each training example's loss under the current weights, without gradients: the
    # difficulty score a loss curriculum orders by. Set by the session.
    score_examples: Callable[[], torch.Tensor] | None = None
    parallel: Parallel = field(default_factory=Parallel)  # this process's rank among torchrun's
    # What the training forward goes through: the DDP/FSDP wrapper under torchrun, else the
    # model. Evaluation, checkpoints and saving use ``model``.
    train_model: torch.nn.Module | None = None
    eval_rows: int = 0                         # held-out examples evaluate() sees (0: it returns {})

    @property
    def world_size(self) -> int:
        """Processes (devices) training together; cost figures count every one."""
        return self.parallel.world_size

    @property
    def micro_batches_per_rank(self) -> int:
        return max(self.micro_batches_per_step // self.world_size, 1)

    @property
    def device_type(self) -> str:
        return self.device.type

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]
