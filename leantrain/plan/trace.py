"""Trace one training micro-step on fake tensors: saved activations, FLOPs, workspace.

Why fake tensors: they carry shape, dtype and a CPU device but no data, so a forward and
backward of a 7B model cost milliseconds of Python and no memory, while autocast, SDPA
kernel choice and autograd behave exactly as on real CPU tensors (meta tensors would
skip autocast). The forward and loss are the run's own (the task's ``loss_sum``), saved
tensors are counted by the memory accountant's ``SavedTensorCounter`` and FLOPs by
``torch.utils.flop_counter.FlopCounterMode``, so the planner and a real run are measured
with the same instruments.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from leantrain.observe.accountant import SavedTensorCounter, _storage_key
from leantrain.plan.meta_model import Setup, build_meta_model, parameter_bytes

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.bfloat16}  # fp16 has bf16's sizes; CPU autocast runs bf16


@dataclass
class StepTrace:
    """What one micro-batch of ``batch`` x ``seq_len`` costs (per-model, not extrapolated)."""

    saved_activations: int
    largest_op_bytes: int
    forward_flops: int
    backward_flops: int
    total_params: int
    trainable_params: int
    weights: int
    trainable_bytes: int
    ops: int = 0               # ATen ops dispatched (forward + backward): each costs a launch

    def combine(self, other: "StepTrace", fn) -> "StepTrace":
        return StepTrace(*(fn(getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__))


class LargestOutput(TorchDispatchMode):
    """Records the largest single-op output (the transient an op needs beyond saved state)
    and counts ops (each is a kernel launch with a fixed cost on a GPU)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view  # views (t, expand, detach, ...) change metadata only: no kernel
        out = func(*args, **(kwargs or {}))
        # An output that shares an input's storage (a view such as the lm_head weight's
        # transpose, an in-place op) allocates nothing; counting its storage made a
        # tied 250k-vocab embedding matrix the "largest transient" of a BLOOM step.
        inputs = {_storage_key(t)[0] for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        size = sum(nbytes for key, nbytes in {_storage_key(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
                   if key not in inputs)
        self.largest = max(self.largest, size)
        return out


def fake_batch(config, task: str, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A batch shaped like the run's collated batches (ids, mask, labels; BERT token types)."""
    ids = torch.zeros(batch, seq_len, dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq_len, dtype=torch.long)}
    if task == "sequence-classification":
        if getattr(config, "type_vocab_size", 0):
            out["token_type_ids"] = torch.zeros(batch, seq_len, dtype=torch.long)
        out["labels"] = torch.zeros(batch, dtype=torch.long)
    else:
        out["labels"] = ids.clone()
    return out


def trace_step(config, task: str, setup: Setup, batch: int, seq_len: int, memory: bool = True, flops: bool = True) -> StepTrace:
    """Build ``config``'s model with ``setup``'s cuts and trace one forward + backward.

    ``memory`` counts saved tensors and the largest op output, ``flops`` counts FLOPs;
    each instrument slows a fake-tensor trace, so callers ask only for what they use."""
    from leantrain.engine.tasks import CausalLMTask, ClassificationTask

    loss_task = ClassificationTask() if task == "sequence-classification" else CausalLMTask()
    model = build_meta_model(config, task, setup)
    sizes = parameter_bytes(model)
    autocast = AUTOCAST.get(setup.compute_dtype)
    optional = lambda on, make: make() if on else contextlib.nullcontext()  # noqa: E731
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        inputs = fake_batch(config, task, batch, seq_len)
        parameters = {_storage_key(p)[0] for p in model.parameters()}
        saved = SavedTensorCounter(exclude=parameters)
        largest = LargestOutput()
        with optional(memory, lambda: saved), optional(memory, lambda: largest):
            with optional(flops, lambda: FlopCounterMode(display=False)) as forward:
                cast = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
                with cast:
                    loss = loss_task.loss_sum(model, inputs)
        with optional(memory, lambda: largest), optional(flops, lambda: FlopCounterMode(display=False)) as backward:
            loss.backward()
    return StepTrace(
        saved_activations=saved.bytes, largest_op_bytes=largest.largest,
        forward_flops=forward.get_total_flops() if flops else 0, backward_flops=backward.get_total_flops() if flops else 0,
        total_params=sizes["total_params"], trainable_params=sizes["trainable_params"],
        weights=sizes["weights"], trainable_bytes=sizes["trainable_bytes"], ops=largest.ops,
    )
