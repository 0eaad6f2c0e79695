"""Quantization-aware training: train through fake int8 (or int4) rounding.

Why: post-training quantization rounds weights the model never saw rounded; when that
costs accuracy, training a few steps with the rounding simulated lets the weights settle
where rounding hurts least. The result is a float model that `leantrain compress
--quantize` turns into the real integer model with less loss.

How: torchao's QAT swaps every ``nn.Linear`` for a ``FakeQuantizedLinear`` (same parameter
names; weights quantized per output channel, or per group for int4, and activations per
token, then dequantized in the forward; straight-through gradients). The fake quantizers
have no state, so the saved model is a plain float model.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

KEY = "cuts.qat"


class QatSettings(CutConfig):
    shorthand_field = "weight_bits"
    weight_bits: Literal[4, 8] = Field(8, description="Bits of the simulated weights: 8 (per output channel, as `compress --quantize int8`) or 4 (per group).")
    group_size: int = Field(32, ge=1, description="Group size of 4-bit weights (ignored for 8-bit).")
    activations: bool = Field(True, description="Also simulate int8 activations (per token, as dynamic quantization does at inference).")


def _torchao_qat():
    try:
        logging.getLogger("torchao").setLevel(logging.ERROR)
        from torchao.quantization import quantize_
        from torchao.quantization.qat import FakeQuantizedLinear, IntxFakeQuantizeConfig, QATConfig
    except ImportError:
        raise UserError(f"{KEY}: needs torchao: pip install torchao") from None
    return quantize_, FakeQuantizedLinear, IntxFakeQuantizeConfig, QATConfig


@register
class Qat(Cut):
    name = "qat"
    Config = QatSettings
    summary = "Quantization-aware training with torchao fake quantization (int8 or int4 weights, int8 activations)."
    order = 8  # before LoRA (10): PEFT then wraps the fake-quantized Linear as the frozen base

    def prepare_model(self, model, run):
        quantize_, _, FakeConfig, QATConfig = _torchao_qat()
        cfg = self.config
        if cfg.weight_bits == 8:
            weight = FakeConfig(torch.int8, "per_channel")
        else:
            weight = FakeConfig(torch.int4, group_size=cfg.group_size)
            narrow = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % cfg.group_size]
            if narrow:
                raise UserError(f"{KEY}.group_size: {narrow[0]} has {dict(model.named_modules())[narrow[0]].in_features} "
                                f"inputs, not a multiple of {cfg.group_size}")
        activation = FakeConfig(torch.int8, "per_token", is_symmetric=False) if cfg.activations else None
        quantize_(model, QATConfig(activation_config=activation, weight_config=weight, step="prepare"))
        return model

    def on_fit_end(self, run) -> bool:
        """Report the layers trained through fake quantization.

        The fake quantizers stay in the in-memory model, so the final evaluation is the
        accuracy the integer model will have; they hold no state of their own, so the saved
        weights are a plain float model (``from_pretrained`` sees ordinary Linear weights).
        """
        _, FakeQuantizedLinear, _, _ = _torchao_qat()
        run.extras["qat_layers"] = sum(isinstance(m, FakeQuantizedLinear) for m in run.model.modules())
        return False
