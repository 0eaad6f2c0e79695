"""Save a compressed model as safetensors + JSON, and load it back with one call.

A pruned model has Linear layers narrower than its config says (heads) and a quantized
one has integer weights that ``from_pretrained`` cannot read, so the folder records each
Linear's shape and the quantization method in ``leantrain.json``; :func:`load_compressed`
rebuilds the architecture from ``config.json`` (no weights downloaded, no code executed),
resizes the Linears, re-applies the quantization structure and copies the saved tensors in.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from leantrain.compress.quantize import load_quantized_state, quantize_model, quantized_state
from leantrain.compress.structure import replace_module, unwrap
from leantrain.errors import UserError

WEIGHTS = "model.safetensors"
META = "leantrain.json"


def linear_shapes(model: nn.Module) -> dict[str, list[int]]:
    """(out_features, in_features) of every Linear, quantized or not."""
    shapes = {}
    for name, module in model.named_modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            shapes[name] = [int(module.out_features), int(module.in_features)]
    return shapes


def save_compressed(model: nn.Module, out_dir: str | Path, meta: dict, tokenizer=None, quantize: str | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``leantrain.json`` (and the tokenizer)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    model.config.save_pretrained(out)
    state = quantized_state(model) if quantize else {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Tied weights (e.g. embeddings and LM head) share storage; safetensors refuses aliases.
    seen: dict[int, str] = {}
    for key in list(state):
        pointer = state[key].untyped_storage().data_ptr()
        if pointer in seen and state[key].numel():
            state[key] = state[key].clone()
        seen[pointer] = key
    save_file(state, out / WEIGHTS, metadata={"format": "pt", "leantrain_quantize": quantize or "none"})
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    full_meta = {**meta, "compressed": {"quantize": quantize, "linear_shapes": linear_shapes(model),
                                         "architecture": type(model).__name__}}
    (out / META).write_text(json.dumps(full_meta, indent=2) + "\n", encoding="utf-8")
    return out


def _resize_linears(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    modules = dict(model.named_modules())
    for name, (out_features, in_features) in shapes.items():
        layer = modules.get(name)
        if isinstance(layer, nn.Linear) and list(layer.weight.shape) != [out_features, in_features]:
            replace_module(model, layer, nn.Linear(in_features, out_features, bias=layer.bias is not None))
    for module in model.modules():  # head-pruned BERT attention: its head count follows the width
        query = getattr(module, "query", None)
        if isinstance(query, nn.Linear) and hasattr(module, "attention_head_size"):
            module.num_attention_heads = query.out_features // module.attention_head_size
            module.all_head_size = query.out_features


def load_compressed(path: str | Path):
    """(model, tokenizer or None, meta) from a folder written by ``leantrain compress``."""
    import transformers
    from safetensors.torch import load_file

    from leantrain.models.loading import _quiet_transformers

    _quiet_transformers()
    folder = Path(path)
    meta_path = folder / META
    if not meta_path.is_file() or "compressed" not in (meta := json.loads(meta_path.read_text(encoding="utf-8"))):
        raise UserError(f"{folder}: not a compressed leantrain model (no {META} with a 'compressed' entry)")
    info = meta["compressed"]
    config = transformers.AutoConfig.from_pretrained(folder)
    auto = (transformers.AutoModelForSequenceClassification if meta.get("task") == "sequence-classification"
            else transformers.AutoModelForCausalLM)
    model = auto.from_config(config)
    _resize_linears(model, info["linear_shapes"])
    state = load_file(folder / WEIGHTS)
    if info["quantize"]:
        model = quantize_model(model, info["quantize"])
        load_quantized_state(model, state)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not _tied(model, k)]:
            raise UserError(f"{folder}: saved tensors do not fit the model ({(unexpected or missing)[:3]})")
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer, meta


def _tied(model: nn.Module, key: str) -> bool:
    """A key the model fills by weight tying (an output embedding sharing the input's)."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("weight") and "head" in key


def file_bytes(folder: str | Path) -> int:
    """Bytes of the weight files in a model folder (safetensors only, not tokenizer or JSON)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def tensor_bytes(model: nn.Module) -> int:
    """What the model's weights would take in a safetensors file, without writing it."""
    return sum(t.numel() * t.element_size() for t in _state(model).values())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    from leantrain.compress.quantize import quantized_linears

    return quantized_state(model) if quantized_linears(model) else dict(model.state_dict())
