"""Dropout masks drawn from whole random words on a CPU, not one Bernoulli draw per element.

Why: profiling the demo step on this CPU (bench/vs_hf.py, torch.profiler) put 19% of all
CPU time in ``aten::bernoulli_``: PyTorch's CPU dropout draws every mask element on its
own (~6 ns each), more than the matmuls of a small model's LoRA layers cost. Here one
64-bit draw of the same generator feeds four 15-bit uniform integers, and the keep mask
is built with integer bit operations straight into bfloat16's bit pattern (then widened
to the activation's dtype): the same distribution (drop probability rounded to 1/32768, the scale matched to
the rounded value so the expectation is exact), the same seeding and resume (the global
torch generator), several times cheaper. On CUDA the fused native kernel is already
fast, so the cut leaves the model alone there.

Covers ``nn.Dropout`` modules (the model's and PEFT's LoRA dropout) and, for a
transformers model with matmul ("eager") attention, the functional dropout on the
attention probabilities, through a registered attention function that calls the
model's own eager attention.
"""
from __future__ import annotations

import functools
import math
import sys

import torch
from torch.overrides import TorchFunctionMode

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.cuts.precision import set_attention

BF16_ONE_BITS = 0x3F80  # the bits of 1.0 in bfloat16, written into the kept positions
ATTENTION_NAME = "leantrain_eager_fast_dropout"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bf16 0/1 mask keeping each element with probability 1 - p, and the scale
    1/(1 - p') for the p' actually used (p rounded to 1/32768)."""
    levels = 1 << 15                                     # 15 uniform bits per element, 4 per 64-bit draw
    threshold = min(round(p * levels), levels)
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    draws = words.view(torch.int16)[:count].view(shape).bitwise_and_(levels - 1)   # uniform in [0, 2^15)
    # draws - threshold is negative exactly where an element is dropped; an arithmetic shift
    # by 15 turns that into all ones (-1) and a kept element into 0; NOT flips the two.
    mask = draws.sub_(threshold).bitwise_right_shift_(15).bitwise_not_().bitwise_and_(BF16_ONE_BITS)
    kept = levels - threshold
    return mask.view(torch.bfloat16), (levels / kept if kept else 0.0)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p, training=True)`` with word-wise random masks (float tensors on CPU)."""
    if p <= 0.0:
        return x
    if x.dtype not in FLOAT_DTYPES or x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training=True)
    mask, scale = keep_mask(x.shape, p, x.device)
    return (x * mask.to(x.dtype)).mul_(scale)


class FastDropout(torch.nn.Dropout):
    """A drop-in ``nn.Dropout`` whose training-mode masks come from :func:`fast_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return fast_dropout(x, self.p)


class _AttentionDropoutMode(TorchFunctionMode):
    """Routes ``F.dropout`` to :func:`fast_dropout` for the few ops of one attention call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout:
            bound = dict(zip(("input", "p", "training", "inplace"), args), **kwargs)
            if bound.get("training", True) and not bound.get("inplace", False):
                return fast_dropout(bound["input"], bound.get("p", 0.5))
        return func(*args, **kwargs)


def eager_attention_with_fast_dropout(module, query, key, value, attention_mask, **kwargs):
    """The module's own eager attention (looked up in its modeling file), with fast dropout."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    if not module.training or not kwargs.get("dropout"):
        return eager(module, query, key, value, attention_mask, **kwargs)
    with _AttentionDropoutMode():
        return eager(module, query, key, value, attention_mask, **kwargs)


@functools.cache
def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, eager_attention_with_fast_dropout)
    AttentionMaskInterface.register(ATTENTION_NAME, AttentionMaskInterface._global_mapping["eager"])


def swap_dropout_modules(model: torch.nn.Module) -> int:
    """Replace every ``nn.Dropout`` with p > 0 by a :class:`FastDropout`; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout and child.p > 0:
                replacement = FastDropout(child.p)
                replacement.train(child.training)
                setattr(parent, child_name, replacement)
                swapped += 1
    return swapped


def use_fast_attention_dropout(model: torch.nn.Module) -> bool:
    """Point a transformers model in eager attention at the fast-dropout attention; True if
    it switched. Models whose modeling file has no ``eager_attention_forward`` stay as they are."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "eager":
        return False
    modeling_files = {type(m).__module__ for m in model.modules() if type(m).__module__.startswith("transformers.models.")}
    if not modeling_files or not all(hasattr(sys.modules[f], "eager_attention_forward") for f in modeling_files):
        return False
    _register_attention()
    return set_attention(model, ATTENTION_NAME)


class FastDropoutSettings(CutConfig):
    pass


@register
class FastDropoutCut(Cut):
    name = "fast_dropout"
    Config = FastDropoutSettings
    summary = "CPU dropout masks from whole random words: same distribution, several times cheaper than per-element draws."
    order = 36  # after LoRA (10, adds its dropout modules) and precision (30, picks the attention kernel)
    # On by default: the same mask distribution, and on CPU it paid on the demo and on two
    # held-out sets (bench/defaults.py, docs/cuts/fast_dropout.md); on CUDA it steps aside.
    default_on = True

    def prepare_model(self, model, run):
        if run.device.type != "cpu":
            run.extras["fast_dropout"] = f"skipped: {run.device.type} has a fused dropout kernel already"
            return model
        swapped = swap_dropout_modules(model)
        attention = use_fast_attention_dropout(model)
        run.extras["fast_dropout"] = {"modules": swapped, "attention": attention}
        return model
