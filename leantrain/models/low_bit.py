"""Low-bit (quantized) Linear weights as a model holds them, and their float values back.

Why here and not in the cut that quantizes: saving a run (a from_scratch base, a merged
LoRA export) must turn whatever quantized Linear layers a model holds back into float
ones, whichever cut or library put them there; the engine and the LoRA cut call this,
not ``cuts.quantized_base``. Covers torchao tensor subclasses (int8, NF4) and
bitsandbytes' Linear8bitLt / Linear4bit.
"""
from __future__ import annotations

import copy

import torch

from leantrain.observe.accountant import inner_tensors


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really occupies: a quantized subclass counts its inner tensors
    (int data, scales), not ``numel * element_size`` of the float dtype it reports."""
    return sum(t.numel() * t.element_size() for t in inner_tensors([tensor]))


def is_quantized(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "__tensor_flatten__") or getattr(tensor, "quant_state", None) is not None \
        or tensor.dtype in (torch.int8, torch.uint8)


def _dense_weight(module: torch.nn.Linear) -> torch.Tensor:
    if hasattr(module.weight, "__tensor_flatten__"):  # torchao int8 or NF4
        return dequantize(module.weight)
    from peft.utils.integrations import dequantize_module_weight  # bitsandbytes

    return dequantize_module_weight(module)


def dequantized_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose quantized Linear layers are plain float ``nn.Linear``
    holding the dequantized weights: exactly the base the adapters trained on, in a form
    PEFT can merge into and transformers can save. A model without quantized layers is
    simply deep-copied."""
    memo: dict[int, object] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and is_quantized(module.weight):
            plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.weight = torch.nn.Parameter(_dense_weight(module).detach().clone(), requires_grad=False)
            if module.bias is not None:
                plain.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=module.bias.requires_grad)
            plain.train(module.training)
            memo[id(module)] = plain
    return copy.deepcopy(model, memo)


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    if hasattr(weight, "get_original_weight"):  # NF4
        return weight.get_original_weight()
    if hasattr(weight, "__tensor_flatten__"):  # int8
        return weight.dequantize()
    return weight  # a float weight standing in for one (the planner's meta model)
