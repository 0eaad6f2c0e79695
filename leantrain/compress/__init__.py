"""Compression after training: distillation, pruning and quantization, with measurements.

    from leantrain.compress import compress, load_compressed
    report = compress("runs/demo", "runs/demo-int8", quantize="int8")
    model, tokenizer, meta = load_compressed("runs/demo-int8/model")

The same building blocks back the training-time cuts ``distill``, ``prune`` and ``qat``.
"""
from leantrain.compress.io import load_compressed, save_compressed
from leantrain.compress.pipeline import compress
from leantrain.compress.prune import prune_ffn, prune_heads, prune_magnitude
from leantrain.compress.quantize import METHODS as QUANTIZE_METHODS
from leantrain.compress.quantize import quantize_model

__all__ = ["compress", "load_compressed", "save_compressed", "prune_ffn", "prune_heads", "prune_magnitude",
           "quantize_model", "QUANTIZE_METHODS"]
