"""SmoothQuant-style activation smoothing for dynamic int8 Linear layers, calibrated per layer.

Why: torch.ao's dynamic int8 Linear quantizes its input with one scale per tensor, so a
few input channels with large values (GELU outputs before an FFN down-projection, some
LayerNorm channels) set the step size for all the others, which then keep only a handful
of levels. SmoothQuant (Xiao et al. 2023, arXiv 2211.10438) divides input channel j by
``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` and multiplies weight column j by the
same ``s_j``: the product is unchanged in exact arithmetic, but the activation's range is
flatter and the (per-output-channel) weight quantization absorbs the difference.

In a post-LayerNorm BERT block the LayerNorm output also feeds the residual and GELU
sits before the down-projection, so ``1/s`` cannot be folded into the previous op; it is
applied explicitly, one elementwise multiply on the Linear's input
(:class:`SmoothedDynamicLinear`). ``alpha`` is chosen per Linear from :data:`ALPHAS` by the
quantized layer's output error on calibration batches (``0`` = not smoothed, no multiply),
because a single global alpha made this demo model worse (measured in docs/compression.md):
the weight side of a down-projection suffers more than its activations gain.

Activation width: torch.ao's dynamic Linear asks for 7-bit activations (``reduce_range``)
because CPUs without VNNI multiply int8 pairs into saturating int16 sums. Where a probe
shows the kernel does not saturate (VNNI and newer), 8-bit activations are used; elsewhere
7-bit. The width is a property of the CPU running the model, re-probed on every load.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

ALPHAS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_RANGE = 1e-5  # floor on channel maxima: a dead channel must not give s = 0 or inf


def _dynamic_linear():
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


@functools.cache
def eight_bit_activations_exact() -> bool:
    """Whether int8 activations times int8 weights run without int16 saturation here.

    Every input at the top of its range against weights of +-0.5: with saturating int16
    pair sums (AVX2 ``vpmaddubsw``) the result is about half the true one.
    """
    linear = nn.Linear(256, 2, bias=False)
    with torch.no_grad():
        linear.weight.fill_(0.5)
        linear.weight[1].fill_(-0.5)
    packed = _quantize_linears(nn.Sequential(linear), _dynamic_linear())[0]._packed_params._packed_params
    inputs = torch.full((2, 256), 3.0)
    inputs[:, 0] = 0.0  # a zero in range keeps the zero point at 0
    got = torch.ops.quantized.linear_dynamic(inputs, packed, reduce_range=False)
    return bool(torch.allclose(got, linear(inputs), rtol=0.02))


def probed_activation_bits() -> int:
    """8 where this CPU's int8 kernel is exact for 8-bit activations, else torch.ao's 7."""
    return 8 if eight_bit_activations_exact() else 7


class SmoothedDynamicLinear(_dynamic_linear()):
    """torch.ao's dynamic int8 Linear with an optional per-input-channel ``1/s`` on its input.

    The weight it holds is already ``W * s``. ``smooth_inv_scale`` is ``None`` for a layer
    calibration left unsmoothed (no extra multiply). Activations are 8-bit where
    :func:`eight_bit_activations_exact`, else 7-bit like torch.ao's own module.
    """

    def __init__(self, in_features, out_features, bias_=True, dtype=torch.qint8):
        super().__init__(in_features, out_features, bias_, dtype=dtype)
        self.register_buffer("smooth_inv_scale", None)
        self.activation_bits = probed_activation_bits()

    def forward(self, x):
        if self.smooth_inv_scale is not None:
            x = x * self.smooth_inv_scale
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=self.activation_bits < 8).to(x.dtype)

    def _get_name(self):
        return "SmoothedDynamicQuantizedLinear"


def _quantize_linears(model: nn.Module, linear_type: type | None = None, activation_bits: int | None = None) -> nn.Module:
    """``quantize_dynamic`` (per-channel int8 weights), every Linear as ``linear_type``
    (default :class:`SmoothedDynamicLinear`, with ``activation_bits`` if given)."""
    import warnings

    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    dynamic = _dynamic_linear()
    mapping = {k: ((linear_type or SmoothedDynamicLinear) if v is dynamic else v)
               for k, v in get_default_dynamic_quant_module_mappings().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's move-to-torchao notice
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, mapping=mapping, inplace=False)
    if activation_bits is not None:
        if activation_bits not in (7, 8):
            raise ValueError(f"activation_bits must be 7 or 8, got {activation_bits}")
        for module in quantized.modules():
            if isinstance(module, SmoothedDynamicLinear):
                module.activation_bits = activation_bits
    return quantized


def smoothing_scale(activation_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` per input channel (all ones at alpha 0)."""
    if alpha == 0:
        return torch.ones_like(activation_max)
    weight_max = weight.detach().abs().amax(dim=0).clamp(min=MIN_RANGE)
    return activation_max.clamp(min=MIN_RANGE) ** alpha / weight_max ** (1 - alpha)


def _token_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Input rows of real tokens: padded positions must not set the channel maxima."""
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


class _Recorder:
    """Forward hooks on every Linear; what each hook does is set per calibration pass."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        self.mask: torch.Tensor | None = None

    @torch.no_grad()
    def run(self, batches, on_input) -> None:
        handles = [m.register_forward_hook(lambda mod, args, out, name=name: on_input(name, mod, args[0], out))
                   for name, m in self.linears.items()]
        try:
            for batch in batches:
                self.mask = batch.get("attention_mask")
                self.model(**{k: v for k, v in batch.items() if k != "labels"})
        finally:
            for handle in handles:
                handle.remove()


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[dict], activation_bits: int | None = None,
              alphas: tuple[float, ...] = ALPHAS) -> dict[str, dict]:
    """Per Linear: the alpha of ``alphas`` whose int8 layer is closest to the float one.

    Two passes over ``batches``: channel maxima of each Linear's input (real tokens only),
    then, for each candidate alpha, the relative squared error of that quantized layer's
    output against the float output on the same inputs (``activation_bits`` as in
    :func:`quantize_smoothed`). Returns ``{name: {"alpha",
    "scale", "error", "error_unsmoothed"}}`` (``error_unsmoothed`` only if 0 is among ``alphas``;
    a single alpha, e.g. ``(0.5,)``, is plain SmoothQuant with one global alpha).
    """
    recorder = _Recorder(model.float().eval())
    maxima: dict[str, torch.Tensor] = {}

    def record_max(name, module, x, out):
        channel_max = _token_rows(x.float(), recorder.mask).abs().amax(dim=0)
        maxima[name] = torch.maximum(maxima[name], channel_max) if name in maxima else channel_max

    recorder.run(batches, record_max)
    candidates = {}
    for name, linear in recorder.linears.items():
        scales = [smoothing_scale(maxima[name], linear.weight, alpha) for alpha in alphas]
        layers = []
        for scale in scales:
            trial = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
            trial.weight.copy_(linear.weight * scale)
            if linear.bias is not None:
                trial.bias.copy_(linear.bias)
            layers.append(_quantize_linears(nn.Sequential(trial), activation_bits=activation_bits)[0])
        candidates[name] = (scales, layers)
    errors = {name: torch.zeros(len(alphas), dtype=torch.float64) for name in candidates}
    norms = dict.fromkeys(candidates, 0.0)

    def record_error(name, module, x, out):
        scales, layers = candidates[name]
        reference = _token_rows(out.float(), recorder.mask)
        norms[name] += reference.pow(2).sum().item()
        for i, (scale, layer) in enumerate(zip(scales, layers)):
            got = _token_rows(layer(x.float() / scale), recorder.mask)
            errors[name][i] += (got - reference).pow(2).sum().item()

    recorder.run(batches, record_error)
    chosen = {}
    for name, (scales, _) in candidates.items():
        relative = errors[name] / max(norms[name], 1e-30)
        best = int(relative.argmin())
        chosen[name] = {"alpha": alphas[best], "scale": scales[best], "error": float(relative[best])}
        if 0.0 in alphas:
            chosen[name]["error_unsmoothed"] = float(relative[alphas.index(0.0)])
    return chosen


@torch.no_grad()
def quantize_smoothed(model: nn.Module, calibration: dict[str, dict] | None = None,
                      activation_bits: int | None = None) -> nn.Module:
    """A dynamic int8 copy of ``model``: weights ``W * s`` per output channel, inputs times ``1/s``.

    Without ``calibration`` no layer is smoothed (the structure a saved model is loaded into).
    ``activation_bits`` (7 or 8) overrides the probed width, for comparisons.
    """
    calibration = calibration or {}
    originals = {}
    for name, linear in model.named_modules():
        if name in calibration and calibration[name]["alpha"] > 0:
            originals[name] = linear.weight.detach().clone()
            linear.weight.mul_(calibration[name]["scale"])
    try:
        quantized = _quantize_linears(model, activation_bits=activation_bits)
    finally:
        modules = dict(model.named_modules())
        for name, weight in originals.items():
            modules[name].weight.copy_(weight)
    modules = dict(quantized.named_modules())
    for name in originals:
        modules[name].smooth_inv_scale = (1.0 / calibration[name]["scale"]).float()
    return quantized
