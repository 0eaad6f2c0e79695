"""Post-training quantization of Linear layers, and saving it as int tensors in safetensors.

Methods (``METHODS``):
- ``int8``: dynamic quantization, int8 weights (per output channel) and int8 activations
  quantized on the fly, through ``torch.ao.quantization.quantize_dynamic``. Its fbgemm
  /onednn kernels make it the fast path on CPU (torchao's int8 tensor subclasses run
  slower than fp32 on CPU without ``torch.compile``, measured in bench/compress.py's run).
  Given a calibration from :func:`leantrain.compress.smoothquant.calibrate` (training
  batches), each Linear's inputs are SmoothQuant-smoothed with a per-layer alpha.
- ``int8-weight``: weight-only int8 through torchao (``Int8WeightOnlyConfig``): 4x smaller
  weights, activations stay float.
- ``int4-weight``: weight-only int4 in groups of 32 through torchao
  (``IntxWeightOnlyConfig``). torchao's packed int4 kernels need CUDA or the ``mslk``
  package; on CPU the weights are held unpacked in int8 memory and dequantized per call,
  so this saves file size (two values per byte on disk), not memory or time.

Quantized weights are written as their integer data plus scales (and zero points), and
smoothed int8 layers their input scale ``1/s`` (``*.smooth_inv_scale``), so
the file really holds int8 (or packed int4) data; :func:`load_quantized_state` puts them
back bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn

from leantrain.compress.smoothquant import quantize_smoothed
from leantrain.errors import DeviceError, UserError

METHODS = ("int8", "int8-weight", "int4-weight")
INT4_GROUP = 32


def _dynamic_linear_type():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return DynamicLinear


def _torchao():
    try:
        import logging

        # torchao logs one line per CUDA-only extension it cannot load; none applies on CPU.
        logging.getLogger("torchao").setLevel(logging.ERROR)
        import torchao.quantization as tq
    except ImportError:
        raise UserError("this quantization method needs torchao: pip install torchao") from None
    return tq


def quantize_model(model: nn.Module, method: str, smoothing: dict | None = None) -> nn.Module:
    """Quantize every Linear of a float model in place (``int8`` returns a new module tree).

    ``smoothing`` (``int8`` only): per-Linear alphas and scales from ``smoothquant.calibrate``.
    """
    if method not in METHODS:
        raise UserError(f"--quantize {method!r}: use one of {', '.join(METHODS)}")
    if smoothing and method != "int8":
        raise UserError(f"--quantize {method}: activation smoothing applies to int8 (dynamic activations) only")
    model = model.float().eval()
    if method == "int8":
        engines = torch.backends.quantized.supported_engines
        if not any(e in engines for e in ("fbgemm", "x86", "onednn", "qnnpack")):
            raise DeviceError(f"int8 dynamic quantization needs a quantized CPU engine; this build has {engines}")
        return quantize_smoothed(model, smoothing)
    tq = _torchao()
    if method == "int8-weight":
        config = tq.Int8WeightOnlyConfig()
    else:
        from torchao.quantization.granularity import PerGroup

        too_narrow = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features % INT4_GROUP]
        if too_narrow:
            raise UserError(f"int4-weight: input width of {too_narrow[0]} is not a multiple of {INT4_GROUP}")
        config = tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP))
    tq.quantize_(model, config)
    return model


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> Linear whose weight is held as integers (either backend)."""
    dynamic = _dynamic_linear_type()
    return {n: m for n, m in model.named_modules()
            if isinstance(m, dynamic) or (isinstance(m, nn.Linear) and hasattr(m.weight, "qdata"))}


def _pack_int4(q: torch.Tensor) -> torch.Tensor:
    flat = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def _unpack_int4(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    pairs = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[: shape.numel()]
    return (pairs.to(torch.int16) - 8).to(torch.int8).reshape(shape)


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a quantized model, integer weights as integer tensors (for safetensors)."""
    dynamic = _dynamic_linear_type()
    state: dict[str, torch.Tensor] = {}
    linears = quantized_linears(model)
    for name, module in linears.items():
        if isinstance(module, dynamic):
            weight = module.weight()
            state[f"{name}.qweight"] = weight.int_repr()
            state[f"{name}.qscale"] = weight.q_per_channel_scales().float()
            state[f"{name}.qzero_point"] = weight.q_per_channel_zero_points().to(torch.int32)
            if module.bias() is not None:
                state[f"{name}.bias"] = module.bias().detach()
            if getattr(module, "smooth_inv_scale", None) is not None:
                state[f"{name}.smooth_inv_scale"] = module.smooth_inv_scale
        else:
            weight = module.weight
            int4 = getattr(weight, "target_dtype", None) == torch.int4
            state[f"{name}.qweight"] = _pack_int4(weight.qdata) if int4 else weight.qdata
            state[f"{name}.qscale"] = weight.scale
            if getattr(weight, "zero_point", None) is not None:
                state[f"{name}.qzero_point"] = weight.zero_point
            if module.bias is not None:
                state[f"{name}.bias"] = module.bias.detach()
    prefixes = tuple(f"{n}." for n in linears)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not name.startswith(prefixes):
            state[name] = tensor.detach()
    return {k: v.contiguous().cpu() for k, v in state.items()}


@torch.no_grad()
def load_quantized_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved integer weights into a model quantized with the same method."""
    dynamic = _dynamic_linear_type()
    for name, module in quantized_linears(model).items():
        qweight, scale = state[f"{name}.qweight"], state[f"{name}.qscale"]
        bias = state.get(f"{name}.bias")
        if isinstance(module, dynamic):
            weight = torch._make_per_channel_quantized_tensor(
                qweight, scale.double(), state[f"{name}.qzero_point"].long(), axis=0)
            module.set_weight_bias(weight, bias)
            if f"{name}.smooth_inv_scale" in state:
                module.smooth_inv_scale = state[f"{name}.smooth_inv_scale"].float().clone()
            continue
        weight = module.weight
        if getattr(weight, "target_dtype", None) == torch.int4:
            qweight = _unpack_int4(qweight, weight.qdata.shape)
        weight.qdata.copy_(qweight)
        weight.scale.copy_(scale)
        if f"{name}.qzero_point" in state:
            weight.zero_point.copy_(state[f"{name}.qzero_point"])
        if bias is not None:
            module.bias.copy_(bias)
    linear_names = set(quantized_linears(model))
    plain = {k: v for k, v in state.items()
             if not k.endswith((".qweight", ".qscale", ".qzero_point", ".smooth_inv_scale")) and k.removesuffix(".bias") not in linear_names}
    # Set by name: the quantized modules' own state-dict loaders expect keys this format
    # does not write (their packed parameters were restored above).
    targets = dict([*model.named_parameters(), *model.named_buffers()])
    missing = set(plain) - set(targets)
    if missing:
        raise UserError(f"saved tensors do not fit the model: {sorted(missing)[:3]}")
    for name, tensor in plain.items():
        targets[name].copy_(tensor)


def linear_payload_bytes(model: nn.Module) -> int:
    """Bytes the Linear layers' weights occupy in memory (data + scales + zero points)."""
    dynamic = _dynamic_linear_type()
    total = 0
    for module in model.modules():
        if isinstance(module, dynamic):
            weight = module.weight()
            total += weight.numel() * weight.element_size()
            total += weight.q_per_channel_scales().numel() * 4 + weight.q_per_channel_zero_points().numel() * 4
            smooth = getattr(module, "smooth_inv_scale", None)
            total += 0 if smooth is None else smooth.numel() * smooth.element_size()
        elif isinstance(module, nn.Linear):
            weight = module.weight
            if hasattr(weight, "qdata"):
                parts = [weight.qdata, weight.scale, getattr(weight, "zero_point", None)]
                total += sum(t.numel() * t.element_size() for t in parts if t is not None)
            else:
                total += weight.numel() * weight.element_size()
    return total
