"""Mixed precision through ``torch.autocast``: matmuls in bf16/fp16, master weights in fp32.

Why: low-precision matmuls run several times faster on hardware with bf16/fp16 units
(tensor cores; AVX-512 BF16 on recent CPUs) and halve activation memory. Trainable
parameters, their gradients and optimizer states stay fp32 so small updates are not
rounded away. fp16 needs a gradient scaler (its range is narrow); bf16 does not.
With a frozen base (LoRA), ``frozen_dtype`` stores the frozen weights in low precision
too, halving weight memory. In bf16 on CPU, a transformers model's attention is switched
from PyTorch's fused kernel (SDPA) to the plain matmul-softmax-matmul: for the short rows
of fine-tuning data the fused kernel's bf16 backward is several times slower on CPU
(measured in bench/vs_hf.py; see docs/cuts/precision.md).
"""
from __future__ import annotations

import functools
import time
from typing import Literal

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import DeviceError, UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionSettings(CutConfig):
    shorthand_field = "dtype"
    dtype: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="Compute dtype inside autocast.")
    frozen_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="Store frozen (requires_grad=False) weights in this dtype; null keeps them as loaded."
    )
    cpu_matmul_attention: bool = Field(
        True, description="With bf16 on a CPU, swap a transformers model's fused SDPA attention for matmul attention "
        "(the same math; with `cuts.fast_dropout` its attention dropout is cheap, and the fused kernel's bf16 backward "
        "is slow there: bench/defaults.py). No effect on a GPU or in fp32.")
    cpu_fallback: bool = Field(
        True, description="On a CPU, time one bf16 and one fp32 matmul at setup; where bf16 is slower (no AVX-512 BF16 "
        "or AMX: bf16 is emulated, measured 5-100x slower on an AVX2-only EPYC), train in fp32 instead and say so.")


def check_device_supports(dtype: str, device: torch.device, key: str = "cuts.precision") -> None:
    """Raise a one-line DeviceError naming ``key`` when ``dtype`` cannot run on ``device``."""
    if dtype == "fp16" and device.type != "cuda":
        raise DeviceError(f"{key}: fp16 needs a CUDA device (this run is on {device.type}); use bf16 here")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{key}: this GPU has no bf16 support (pre-Ampere); use fp16")


@functools.cache
def cpu_bf16_slowdown(size: int = 256, repeats: int = 3) -> float:
    """How many times slower a bf16 matmul runs than fp32 on this CPU (best of ``repeats``).
    Measured, not read from CPU flags: the flags do not say which kernels a torch build uses.
    Once per process: smoke and training (and every ablation rung's session) ask again."""

    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, 2 * size, dtype=dtype), torch.randn(4 * size, 2 * size, dtype=dtype)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b.t()
            torch.randn(size, 4 * size, dtype=dtype) @ b  # the backward's layout, the slowest when emulated
            best = min(best, time.perf_counter() - started)
        timings[dtype] = best
    return timings[torch.bfloat16] / timings[torch.float32]


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast frozen floating-point parameters to ``dtype`` in place; returns bytes saved."""
    saved = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            before = param.numel() * param.element_size()
            param.data = param.data.to(dtype)
            saved += before - param.numel() * param.element_size()
    return saved


def set_attention(model: torch.nn.Module, implementation: str) -> bool:
    """Switch a transformers model's attention implementation; True if it took. Models
    without the switch (plain torch modules) or that refuse the implementation are left alone."""
    config = getattr(model, "config", None)
    setter = getattr(model, "set_attn_implementation", None)
    if config is None or setter is None:
        return False
    try:
        setter(implementation)
    except (ValueError, AttributeError):
        return False
    return getattr(config, "_attn_implementation", None) == implementation


def use_matmul_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model from fused (SDPA) to matmul ("eager") attention; True
    if it switched. Models that do not use SDPA are left alone."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa":
        return False
    return set_attention(model, "eager")


@register
class Precision(Cut):
    name = "precision"
    Config = PrecisionSettings
    summary = "Autocast to bf16/fp16 with fp32 master weights (and an fp16 grad scaler)."
    order = 30

    def setup(self, run) -> None:
        check_device_supports(self.config.dtype, run.device)
        if self.config.dtype == "bf16" and run.device.type == "cpu" and self.config.cpu_fallback:
            slowdown = cpu_bf16_slowdown()
            if slowdown > 1.0:
                run.extras["precision"] = f"fp32: a bf16 matmul measured {slowdown:.1f}x slower than fp32 on this CPU"
                print(f"leantrain: cuts.precision: bf16 measured {slowdown:.1f}x slower than fp32 on this CPU "
                      "(no native bf16 units); training in fp32 (cuts.precision.cpu_fallback=false keeps bf16)", flush=True)
                self.config = self.config.model_copy(update={"dtype": "fp32", "frozen_dtype": None})
        if self.config.frozen_dtype:
            check_device_supports(self.config.frozen_dtype, run.device, "cuts.precision.frozen_dtype")
            if self.config.frozen_dtype != "fp32" and self.config.dtype == "fp32":
                # Without autocast, low-precision weights would meet fp32 activations in a matmul.
                raise UserError(
                    f"cuts.precision.frozen_dtype: {self.config.frozen_dtype} weights need autocast; "
                    "set cuts.precision.dtype to bf16 (or fp16 on CUDA)"
                )
        self.scaler = None
        if self.config.dtype == "fp16":
            self.scaler = torch.amp.GradScaler(run.device_type)

    def prepare_model(self, model, run):
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()  # master weights must be fp32
        if self.config.frozen_dtype:
            run.extras["frozen_weight_bytes_saved"] = cast_frozen(model, DTYPES[self.config.frozen_dtype])
        cpu_bf16 = self.config.dtype == "bf16" and run.device.type == "cpu"
        if self.config.cpu_matmul_attention and cpu_bf16 and use_matmul_attention(model):
            run.extras["attention"] = "eager (bf16 on CPU: faster than the fused SDPA kernel)"
        return model

    def forward_context(self, run):
        dtype = DTYPES[self.config.dtype]
        return torch.autocast(run.device_type, dtype=dtype, enabled=dtype != torch.float32)

    def scale_loss(self, loss, run):
        return self.scaler.scale(loss) if self.scaler else loss

    def on_before_optimizer_step(self, optimizer, run) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)  # so gradient clipping sees true magnitudes

    def optimizer_step(self, optimizer, run) -> bool:
        if not self.scaler:
            return False
        self.scaler.step(optimizer)  # skips the step if gradients overflowed
        self.scaler.update()
        return True

    def on_skipped_step(self, run) -> bool:
        if not self.scaler:
            return False
        self.scaler.update()  # overflow: shrink the loss scale, as scaler.step would have
        return True

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if getattr(self, "scaler", None) else {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler") and getattr(self, "scaler", None):
            self.scaler.load_state_dict(state["scaler"])
