"""A frozen low-bit base under LoRA (QLoRA-style): the base's Linear weights stored in 8 or 4 bits.

Why: with LoRA the base only runs forward and backward-through; it never changes. Its
Linear weights, the bulk of the model, can therefore sit in int8 (1 byte per weight) or
NF4 (half a byte plus one scale per block) instead of 4 (fp32) or 2 (bf16) bytes: the
weight memory of a model that would not otherwise fit shrinks 2-4x, while the adapters
and the task head keep training in fp32 on top of it.

How: after PEFT has wrapped the model (this cut's order is after LoRA, pruning,
checkpointing and precision), every ``nn.Linear`` whose weight is frozen and that is not
an adapter or a copy of the task head gets its weight replaced by a quantized tensor
subclass. ``torchao``: int8 weight-only (``Int8Tensor``, per output channel) or NF4
(``NF4Tensor``, the QLoRA data type; torchtune's QLoRA uses it); both run on any device,
CPU included, dequantizing inside the matmul. ``bitsandbytes``: its Linear8bitLt /
Linear4bit (NF4) modules, which need a CUDA device. The adapters see a plain ``Linear``
forward, so PEFT's LoRA layers are unchanged; checkpoints and the saved adapter hold only
trainable weights, never the quantized base.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import DeviceError, UserError
from leantrain.models.low_bit import dequantize, is_quantized, stored_bytes

KEY = "cuts.quantized_base"
# Module names that must stay trainable or float: the adapters and PEFT's head copies.
KEEP_FLOAT = ("lora_", "modules_to_save", "original_module")


class QuantizedBaseSettings(CutConfig):
    shorthand_field = "bits"
    bits: Literal[4, 8] = Field(8, description="Bits per frozen base weight: 8 (int8, per output channel) or 4 (NF4, per block).")
    backend: Literal["torchao", "bitsandbytes"] = Field(
        "torchao", description="`torchao` (any device, CPU included) or `bitsandbytes` (CUDA only).")
    block_size: int = Field(64, ge=2, description="4-bit only: weights per NF4 block (one scale each); a layer's weight count must be a multiple.")


def frozen_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The base's Linear layers: frozen weight, not an adapter or a copy of the head."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
            and not is_quantized(module.weight) and not any(part in name for part in KEEP_FLOAT)]


class _LinearOverFrozenLowBit(torch.autograd.Function):
    """``x @ W.T + b`` for a frozen quantized ``W`` that keeps only the low-bit weight.

    Autograd on torchao's own linear would save the dequantized float weight of every
    layer for backward, which gives back the memory the quantization saved. The weight is
    frozen, so backward needs only ``grad @ W``: dequantize it again there instead (the
    trade QLoRA makes: a little compute for the memory).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight, ctx.x_dtype = weight, x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return torch.nn.functional.linear(x, dequantize(weight).to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.matmul(dequantize(ctx.weight).to(grad.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_bias


class LowBitLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose frozen weight is a torchao low-bit tensor (same names, same
    state dict keys); its forward saves nothing but the input's dtype for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearOverFrozenLowBit.apply(x, self.weight, self.bias)


def _quiet_torchao():
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise UserError(f"{KEY}.backend: torchao is not installed: pip install torchao") from None


def _torchao_int8(layers) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    for _, module in layers:
        quantize_(module, Int8WeightOnlyConfig())
        module.__class__ = LowBitLinear


def _nf4_scaler_block(blocks: int) -> int:
    """The largest divisor of ``blocks`` up to torchao's default 256 scales per scale block."""
    return next(size for size in range(min(256, blocks), 0, -1) if blocks % size == 0)


def _torchao_nf4(layers, block_size: int) -> None:
    from torchao.quantization import NF4Tensor

    for name, module in layers:
        if module.weight.numel() % block_size:
            raise UserError(f"{KEY}.block_size: {name} has {module.weight.numel()} weights, not a multiple of {block_size}")
    for _, module in layers:
        weight = module.weight.detach()
        blocks = weight.numel() // block_size
        module.weight = torch.nn.Parameter(NF4Tensor.from_tensor(weight, block_size, _nf4_scaler_block(blocks)),
                                           requires_grad=False)
        module.__class__ = LowBitLinear


def _bitsandbytes(model, layers, bits: int) -> None:
    """Swap each layer for its bitsandbytes twin; the weights quantize when the session
    moves the model to the CUDA device."""
    import bitsandbytes as bnb

    modules = dict(model.named_modules())
    for name, module in layers:
        bias = module.bias is not None
        if bits == 8:
            twin = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=bias, has_fp16_weights=False)
            twin.weight = bnb.nn.Int8Params(module.weight.data, requires_grad=False, has_fp16_weights=False)
        else:
            twin = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=bias, quant_type="nf4",
                                     compute_dtype=module.weight.dtype)
            twin.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4")
        if bias:
            twin.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, twin)


def low_bit_bytes(weight: torch.Tensor, settings: QuantizedBaseSettings) -> int:
    """Bytes ``weight`` takes once quantized with ``settings`` (the planner's figure, on the
    meta device): int8 data plus a scale and an int8 zero point per row; or NF4 codes (two
    per byte), an int8 scale per block, a float factor per group of blocks, the 16-entry
    code table and one mean. Matches torchao's tensors for fp32 weights."""
    if settings.bits == 8:
        return weight.numel() + weight.shape[0] * (weight.element_size() + 1)
    blocks = weight.numel() // settings.block_size
    return weight.numel() // 2 + blocks + 4 * (blocks // _nf4_scaler_block(max(blocks, 1))) + 4 + 16 * 4


def plan_on_meta(model: torch.nn.Module, settings: QuantizedBaseSettings) -> dict[int, int]:
    """What this cut does to a meta-device model (``leantrain plan``), without quantizing:
    the frozen base Linear layers get the low-bit forward (nothing saved for backward),
    and the result maps each such weight's id to the bytes it would hold."""
    planned = {}
    for _, module in frozen_linears(model):
        module.__class__ = LowBitLinear
        planned[id(module.weight)] = low_bit_bytes(module.weight, settings)
    return planned


@register
class QuantizedBase(Cut):
    name = "quantized_base"
    Config = QuantizedBaseSettings
    summary = "Store LoRA's frozen base Linear weights in int8 or 4-bit NF4 (QLoRA-style); only adapters and head train."
    # After LoRA (10, it must freeze the base first), pruning (15), checkpointing (20) and
    # precision (30, whose frozen_dtype cast would otherwise meet quantized weights).
    order = 35
    requires = ("lora",)
    conflicts = {
        "qat": "QAT fake-quantizes trainable float weights; a really quantized frozen base has none to simulate",
        "prune": "pruning scores and shrinks the base's Linear weights, which this cut stores quantized",
    }

    def setup(self, run) -> None:
        if self.config.backend == "bitsandbytes":
            bits = f"bitsandbytes {self.config.bits}-bit"
            if run.device.type != "cuda":
                raise DeviceError(f"{KEY}.backend: {bits} needs a CUDA device (this run is on {run.device.type}); "
                                  "use backend: torchao")
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise UserError(f"{KEY}.backend: {bits} needs the bitsandbytes package: pip install bitsandbytes") from None
        else:
            _quiet_torchao()

    def prepare_model(self, model, run):
        if run.parallel.enabled and run.parallel.shard:
            raise UserError(f"{KEY}: cannot run with cuts.fsdp under torchrun (FSDP does not shard these quantized "
                            "weights); drop cuts.fsdp: each rank then holds the small quantized base whole")
        layers = frozen_linears(model)
        if not layers:
            raise UserError(f"{KEY}: the model has no frozen Linear layers to quantize")
        before = sum(stored_bytes(module.weight) for _, module in layers)
        if self.config.backend == "bitsandbytes":
            _bitsandbytes(model, layers, self.config.bits)
        elif self.config.bits == 8:
            _torchao_int8(layers)
        else:
            _torchao_nf4(layers, self.config.block_size)
        modules = dict(model.named_modules())
        if self.config.backend == "bitsandbytes":  # quantized only when moved to the GPU: the nominal size
            after = sum(modules[name].weight.numel() for name, _ in layers) * self.config.bits // 8
        else:
            after = sum(stored_bytes(modules[name].weight) for name, _ in layers)
        if run.parallel.enabled:
            # DDP broadcasts rank 0's parameters when it wraps the model, which these tensor
            # types cannot go through. Every rank quantizes the same base the same way, and
            # frozen weights have no gradients to reduce: DDP may leave them out.
            ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
            model._ddp_params_and_buffers_to_ignore = ignored + [
                name for name, param in model.named_parameters() if is_quantized(param)]
        run.extras["quantized_base"] = {
            "backend": self.config.backend, "bits": self.config.bits, "layers": len(layers),
            "weight_bytes_before": before, "weight_bytes_after": after,
        }
        return model
