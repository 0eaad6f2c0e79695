"""Post-training quantization: integer weights in memory and on disk, and a faithful reload."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

from leantrain.compress import load_compressed, quantize_model, save_compressed
from leantrain.compress.io import file_bytes
from leantrain.compress.quantize import linear_payload_bytes, quantized_linears


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("method", ["int8", "int8-weight", "int4-weight"])
def test_quantized_model_holds_integers_and_reloads_bit_for_bit(method, tiny_model_and_batch, tmp_path):
    model, batch = tiny_model_and_batch
    quantized = quantize_model(copy.deepcopy(model), method)
    linears = quantized_linears(quantized)
    assert len(linears) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert linear_payload_bytes(quantized) * 3 < linear_payload_bytes(model)

    folder = save_compressed(quantized, tmp_path / method, {"task": "sequence-classification"}, quantize=method)
    with safe_open(folder / "model.safetensors", "pt") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    weight_dtype = "U8" if method == "int4-weight" else "I8"  # int4: two values packed per byte
    assert {stored[f"{name}.qweight"] for name in linears} == {weight_dtype}
    assert not any(k.endswith(".weight") and k.rsplit(".", 1)[0] in linears for k in stored)

    reloaded, _, meta = load_compressed(folder)
    assert meta["compressed"]["quantize"] == method
    assert torch.equal(_logits(reloaded, batch), _logits(quantized, batch))
    # Quantization changes the outputs a little, not the predictions' meaning.
    assert torch.allclose(_logits(quantized, batch), _logits(model, batch), atol=0.3)


def test_int4_file_is_smaller_than_int8_file(tiny_model_and_batch, tmp_path):
    model, _ = tiny_model_and_batch
    sizes = {}
    for method in ("int8-weight", "int4-weight"):
        quantized = quantize_model(copy.deepcopy(model), method)
        sizes[method] = file_bytes(save_compressed(quantized, tmp_path / method, {"task": "sequence-classification"},
                                                   quantize=method))
    float_size = file_bytes(save_compressed(copy.deepcopy(model), tmp_path / "float", {"task": "sequence-classification"}))
    assert sizes["int4-weight"] < sizes["int8-weight"] < float_size
