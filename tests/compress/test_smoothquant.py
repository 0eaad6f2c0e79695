"""SmoothQuant smoothing of dynamic int8 Linears: applied, more accurate on outliers, saved and reloaded."""
from __future__ import annotations

import copy

import torch
from safetensors import safe_open
from torch import nn

from leantrain.compress import load_compressed, quantize_model, save_compressed
from leantrain.compress.quantize import linear_payload_bytes, quantized_linears
from leantrain.compress.smoothquant import calibrate, quantize_smoothed, smoothing_scale

OUTLIER = 5


class OneLinear(nn.Module):
    """A single Linear called with keyword inputs, like a transformers model."""

    def __init__(self, in_features=64, out_features=32):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, inputs, attention_mask=None):
        return self.proj(inputs)


def _outlier_inputs(seed: int, rows: int = 8, tokens: int = 16) -> torch.Tensor:
    """Gaussian inputs whose one channel is 60x larger, as LayerNorm/GELU outputs have."""
    x = torch.randn(rows, tokens, 64, generator=torch.Generator().manual_seed(seed))
    x[..., OUTLIER] *= 60
    return x


def _relative_error(model, reference, x) -> float:
    with torch.no_grad():
        return ((model(inputs=x) - reference(inputs=x)).pow(2).sum() / reference(inputs=x).pow(2).sum()).item()


def test_outlier_channel_is_quantized_more_accurately_with_smoothing():
    torch.manual_seed(0)
    model = OneLinear().eval()
    calibration = calibrate(model, [{"inputs": _outlier_inputs(seed)} for seed in range(3)])
    assert calibration["proj"]["alpha"] > 0  # the outlier makes smoothing worth it
    smoothed = quantize_smoothed(copy.deepcopy(model), calibration)
    plain = quantize_smoothed(copy.deepcopy(model))
    held_out = _outlier_inputs(seed=99)
    error_smoothed, error_plain = _relative_error(smoothed, model, held_out), _relative_error(plain, model, held_out)
    assert error_smoothed < error_plain / 3, (error_smoothed, error_plain)
    # The held weight is W * s in int8: without the 1/s on the input the output is far off.
    assert smoothed.proj.weight().dtype == torch.qint8
    smoothed.proj.smooth_inv_scale = None
    assert _relative_error(smoothed, model, held_out) > 100 * error_smoothed


def test_padded_positions_do_not_set_the_channel_maxima():
    torch.manual_seed(0)
    model = OneLinear().eval()
    x = torch.randn(4, 10, 64)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[:, 7:] = 0
    x[:, 7:, OUTLIER] = 1e4  # what a padded position computes is never used
    chosen = calibrate(model, [{"inputs": x, "attention_mask": mask}])["proj"]
    real_max = x[:, :7].abs().amax(dim=(0, 1))
    assert torch.allclose(chosen["scale"], smoothing_scale(real_max, model.proj.weight, chosen["alpha"]))


def test_smoothed_model_round_trips_through_safetensors(tiny_model_and_batch, tmp_path):
    model, batch = tiny_model_and_batch
    generator = torch.Generator().manual_seed(0)
    # Scales far from 1 on every Linear, so a reload that dropped them would show.
    calibration = {name: {"alpha": 0.5, "scale": torch.rand(m.in_features, generator=generator) * 4 + 0.25}
                   for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    quantized = quantize_model(copy.deepcopy(model), "int8", smoothing=calibration)
    plain = quantize_model(copy.deepcopy(model), "int8")
    scale_bytes = sum(4 * m.in_features for m in quantized_linears(quantized).values())
    assert linear_payload_bytes(quantized) == linear_payload_bytes(plain) + scale_bytes

    folder = save_compressed(quantized, tmp_path / "int8", {"task": "sequence-classification"}, quantize="int8")
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {k.rsplit(".", 1)[0] for k in f.keys() if k.endswith(".smooth_inv_scale")} == set(calibration)
    reloaded, _, _ = load_compressed(folder)
    with torch.no_grad():
        got, want, reference = reloaded(**batch).logits, quantized(**batch).logits, model(**batch).logits
    assert torch.equal(got, want)
    assert torch.allclose(want, reference, atol=0.3)
