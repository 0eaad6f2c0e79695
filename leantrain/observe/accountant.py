"""Tensor memory accounting of training steps, measured on the real tensors.

Why: on CPU there is no allocator high-water mark, and process RSS is dominated by the
interpreter and libraries, which hides exactly what the cuts change. This instrument counts, on the
live objects:
  - weights: bytes of every parameter and buffer;
  - gradients: bytes of every ``.grad`` when the step's gradients are complete;
  - optimizer states: bytes of every tensor in ``optimizer.state`` after the step;
  - saved activations: bytes of tensors autograd saved for backward
    (``saved_tensors_hooks``), deduplicated by storage, parameters excluded; the
    largest micro-batch of the run so far.
Their sum is the training-state peak that the cuts act on (it leaves out transient
workspace inside single ops).
"""
from __future__ import annotations

import contextlib

import torch

from leantrain.cuts.base import Cut


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    # The storage object's own address, not its data pointer: views share it, and it is
    # distinct for meta and fake tensors too (which have no data), so the planner counts
    # saved tensors of a traced step with this same code.
    if hasattr(t, "to_local"):  # a sharded DTensor (FSDP): count this rank's shard
        t = t.to_local()
    storage = t.untyped_storage()
    return storage._cdata, storage.nbytes()


class SavedTensorCounter:
    """Context manager: total bytes of distinct storages saved for backward inside it."""

    def __init__(self, exclude: set[int] | None = None):
        self.exclude = exclude or set()
        self.storages: dict[int, int] = {}

    def _pack(self, t: torch.Tensor):
        ptr, size = _storage_key(t)
        if ptr not in self.exclude:
            self.storages[ptr] = size
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def inner_tensors(tensors):
    """Quantized tensor subclasses (torchao's int8, NF4) report a float dtype and no real
    storage of their own: what they hold is their inner tensors (int data, scales)."""
    for t in tensors:
        if hasattr(t, "__tensor_flatten__") and not hasattr(t, "to_local"):
            names, _ = t.__tensor_flatten__()
            yield from inner_tensors(getattr(t, name) for name in names)
        else:
            yield t


def tensor_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in inner_tensors(tensors):
        if torch.is_tensor(t) and t.device.type != "meta":
            ptr, size = _storage_key(t)
            seen[ptr] = size
    return sum(seen.values())


class MemoryAccountant(Cut):
    """Instrument (not a recipe cut): fills ``run.extras['memory_breakdown']``.

    Weights, gradients and optimizer states are measured once (their size does not
    change); saved activations are counted on every micro-batch and the largest is kept,
    because batch shapes vary (length bucketing) and the peak is set by the longest.
    The cost is one Python call per tensor saved for backward.
    """

    name = "memory_accountant"
    order = 100

    def __init__(self):
        super().__init__(config=None)
        self.breakdown: dict[str, int] = {"saved_activations": 0}
        self.parameter_storages: set[int] | None = None

    def forward_context(self, run):
        if not run.model.training:
            return contextlib.nullcontext()
        if self.parameter_storages is None:
            self.parameter_storages = {_storage_key(p)[0] for p in run.model.parameters()}
        counter = SavedTensorCounter(exclude=self.parameter_storages)
        return _KeepLargest(counter, self.breakdown)

    def on_before_optimizer_step(self, optimizer, run) -> None:
        if "gradients" not in self.breakdown:
            self.breakdown["gradients"] = tensor_bytes(p.grad for p in run.model.parameters() if p.grad is not None)

    def on_step_end(self, run) -> None:
        model = run.model
        if "optimizer_states" not in self.breakdown:  # states exist after the first step
            self.breakdown["weights"] = tensor_bytes(list(model.parameters()) + list(model.buffers()))
            self.breakdown["optimizer_states"] = tensor_bytes(
                v for state in run.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0
            )
        parts = {k: v for k, v in self.breakdown.items() if k != "total"}
        run.extras["memory_breakdown"] = {**parts, "total": sum(parts.values())}


class _KeepLargest:
    """Count one forward's saved tensors and keep the largest total seen so far."""

    def __init__(self, counter: SavedTensorCounter, breakdown: dict[str, int]):
        self.counter, self.breakdown = counter, breakdown

    def __enter__(self):
        self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        result = self.counter.__exit__(*exc)
        self.breakdown["saved_activations"] = max(self.breakdown["saved_activations"], self.counter.bytes)
        return result
