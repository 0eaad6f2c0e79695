"""Training on several processes (torchrun): who this process is, and what ranks agree on.

``torchrun --nproc_per_node N -m leantrain train RECIPE`` starts N copies of the run;
torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. ``Parallel.from_env()`` joins them into
one process group (NCCL on CUDA, gloo on CPU) and everything else asks this object,
so a single-process run has no process group and pays for nothing: every collective
below returns its input when ``world_size == 1``.

What ranks must agree on, and where they do it:
  - the model: DistributedDataParallel broadcasts rank 0's weights when it wraps the
    model and averages gradients in buckets while backward is still running
    (compute/communication overlap); with ``cuts.fsdp`` FSDP2 (``fully_shard``) shards
    weights, gradients and optimizer states instead, and checkpoints gather them whole;
  - each optimizer step's totals (examples, samples or target tokens, micro-batches):
    one all-reduce of three numbers, so each rank divides its summed loss by the global
    count and accumulation stays exact across ranks;
  - stopping: a SIGTERM to any rank is all-reduced at the next safe point, so every rank
    checkpoints and stops at the same step;
  - checkpoints: rank 0 writes, all ranks wait for the write before ``latest`` is used.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch



@dataclass
class Parallel:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    shard: bool = False                  # FSDP instead of DDP (set by cuts.fsdp)
    reshard_after_forward: bool = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Parallel":
        """This process's place in a torchrun job; a single process when not under torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        parallel = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(parallel.local_rank)
            # A rank waiting on a peer that died gives up after this long instead of hanging.
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return parallel

    def device(self, requested: torch.device) -> torch.device:
        """One accelerator per local rank: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if self.enabled and requested.type == "cuda" and requested.index is None:
            return torch.device("cuda", self.local_rank)
        return requested

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the training forward goes through: DDP under torchrun, the model
        itself otherwise. Evaluation and saving use the unwrapped model (the weights are
        the same on every rank)."""
        if not self.enabled:
            return model
        if self.shard:
            return self._fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        # bucket_cap_mb (25) and gradient_as_bucket_view are the overlap knobs; see docs/distributed.md.
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)

    def micro_step(self, train_model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Around one micro-batch's forward and backward: gradients are all-reduced only
        on the last micro-batch of an optimizer step (DDP ``no_sync`` before it)."""
        if self.fsdp:
            train_model.set_requires_gradient_sync(last)  # reduce-scatter on the last only
        elif self.enabled and not last:
            return train_model.no_sync()
        return contextlib.nullcontext()

    # -- FSDP: sharded weights, gathered whole for checkpoints and the saved model --

    def _fully_shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard each block the model names as unsplittable (Hugging Face models list
        them in ``_no_split_modules``), then the rest: one all-gather per block in
        forward and one reduce-scatter per block in backward, overlapped with compute."""
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in list(model.modules()):
            if module is not model and type(module).__name__ in blocks:
                fully_shard(module, reshard_after_forward=self.reshard_after_forward)
        return fully_shard(model, reshard_after_forward=self.reshard_after_forward)

    @property
    def fsdp(self) -> bool:
        return self.enabled and self.shard

    @contextlib.contextmanager
    def full_weights(self, model: torch.nn.Module):
        """Every rank sees whole parameters inside (an all-gather under FSDP), so the
        usual code saves them; outside, they are shards again. Read-only: writes to the
        gathered copies are lost, load with ``load_weights``."""
        if not self.fsdp:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for module in sharded:
            module.unshard()
        try:
            yield
        finally:
            for module in sharded:
                module.reshard()

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the model's state dict gathered whole on the CPU (every rank must
        call it; rank 0 receives it); None otherwise, where ``model.state_dict()`` is whole."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_weights(self, model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
        """Whole tensors by parameter/buffer name into a sharded model (each rank keeps its shard)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=False))

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state, whole: under FSDP gathered from the shards and keyed by
        parameter name (a collective: every rank calls it)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def clip_grad_norm(self, parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradient norm over all ranks' gradients; returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a sharded sum

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, in place (one all-reduce); unchanged on one process."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def totals(self, values: list[float]) -> list[float]:
        """Numbers summed over ranks (one all-reduce); as given on one process."""
        if not self.enabled:
            return values
        return self.sum(torch.tensor(values, dtype=torch.float64, device=self._collective_device())).tolist()

    def max(self, value: int) -> int:
        """The largest ``value`` over ranks: a stop signal on any rank becomes everyone's."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if torch.cuda.is_available():
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def reseed(self, seed: int, step: int, position: int) -> None:
        """The RNG as a pure function of (seed, step, global micro-batch of the step).

        This rank's ``position``-th micro-batch is the step's micro-batch ``position *
        world_size + rank`` (see :func:`shard_epoch`), so W ranks draw the dropout masks
        one process accumulating W micro-batches draws, micro-batch for micro-batch: the
        two train the same weights, and a run resumed on another number of ranks draws
        what the uninterrupted run would have, without storing any rank's RNG state."""
        micro_batch = position * self.world_size + self.rank
        torch.manual_seed(((seed * 1_000_003 + step) * 65_537 + micro_batch) % 2**63)

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def shard_epoch(batches: list[list[int]], start: int, per_rank: int, world_size: int, rank: int
                ) -> list[tuple[list[int], bool]]:
    """This rank's micro-batches of an epoch from global micro-batch ``start`` on, as
    ``(indices, real)`` pairs, in steps of ``per_rank * world_size`` micro-batches.

    The global list ``batches`` is the same on every rank (a pure function of seed and
    epoch), so the shares are disjoint and together cover every example once. In a
    short last step a rank may have nothing: it then gets a stand-in (``real=False``)
    that it trains on with zero weight, so it still joins the gradient all-reduce.
    The cursor ``start`` counts global micro-batches, so a run resumed with another
    number of ranks continues exactly where the previous one stopped.
    """
    group = per_rank * world_size
    mine: list[tuple[list[int], bool]] = []
    for first in range(start, len(batches), group):
        step = batches[first : first + group]
        share = step[rank::world_size]  # every world_size-th micro-batch, from rank on
        mine += [(b, True) for b in share] or [(step[0], False)]
    return mine
