"""Where a transformer keeps its blocks, FFNs and attention projections.

Compression acts on these parts by name, so it must find them in BERT-family encoders
(``encoder.layer[i].intermediate/output/attention``) and Llama-family decoders
(``layers[i].mlp`` / ``self_attn``) without a per-model table in every function. A model
that matches neither gets a clear error instead of a silently untouched model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from leantrain.errors import UserError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain transformers model under a PEFT wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)
    inner = getattr(base, "model", None)
    if hasattr(model, "peft_config") and isinstance(inner, nn.Module):
        return inner
    return model


def block_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, blocks): the ModuleList holding the model's transformer blocks.

    It is the ModuleList whose length is ``config.num_hidden_layers``; the parent and
    attribute are returned so the list can be replaced by a shorter one.
    """
    model = unwrap(model)
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == layers and len(child) > 0:
                return module, attr, child
    raise UserError(f"{type(model).__name__}: no list of {layers} transformer blocks found; "
                    "layer dropping and distillation support BERT- and Llama-style models")


def keep_blocks(model: nn.Module, keep: list[int]) -> nn.Module:
    """Drop every transformer block not listed in ``keep`` (indices into the current list).

    The config follows, so ``save_pretrained`` writes a model that loads back with the
    new depth. Per-layer facts (``layer_idx`` for KV caches, ``layer_types``) are renumbered.
    """
    parent, attr, blocks = block_list(model)
    if not keep or any(i < 0 or i >= len(blocks) for i in keep) or len(set(keep)) != len(keep):
        raise UserError(f"keep_layers {keep}: must be distinct indices in 0..{len(blocks) - 1}")
    kept = nn.ModuleList([blocks[i] for i in keep])
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    setattr(parent, attr, kept)
    config = unwrap(model).config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    return model


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` block indices spread over ``total``: 3 of 6 -> [0, 2, 4] (DistilBERT's choice)."""
    if not 1 <= count <= total:
        raise UserError(f"cannot keep {count} of {total} layers")
    return [i * total // count for i in range(count)]


@dataclass
class FeedForward:
    """One block's FFN: ``up`` layers produce the hidden neurons (rows), ``down`` consumes them (columns)."""

    up: list[nn.Linear]
    down: nn.Linear

    @property
    def width(self) -> int:
        return self.down.in_features


@dataclass
class Attention:
    """One block's self-attention: q/k/v produce heads (rows), ``out`` consumes them (columns)."""

    qkv: list[nn.Linear]
    out: nn.Linear
    head_size: int

    @property
    def heads(self) -> int:
        return self.out.in_features // self.head_size


def feed_forwards(model: nn.Module) -> list[FeedForward]:
    found = []
    for block in block_list(model)[2]:
        if hasattr(block, "intermediate") and hasattr(block, "output"):  # BERT family
            found.append(FeedForward([block.intermediate.dense], block.output.dense))
        elif hasattr(block, "mlp") and hasattr(block.mlp, "down_proj"):  # Llama family (gated)
            found.append(FeedForward([block.mlp.gate_proj, block.mlp.up_proj], block.mlp.down_proj))
        else:
            raise UserError(f"{type(block).__name__}: FFN layout not recognised (BERT- and Llama-style blocks are)")
    return found


def attentions(model: nn.Module) -> list[Attention]:
    found = []
    config = unwrap(model).config
    head_size = config.hidden_size // config.num_attention_heads
    for block in block_list(model)[2]:
        attention = getattr(block, "attention", None)
        if attention is None or not hasattr(attention, "self"):
            raise UserError(f"{type(block).__name__}: head pruning supports BERT-style attention "
                            "(query/key/value + output.dense); grouped-query attention (Llama) is not supported")
        parts = attention.self
        found.append(Attention([parts.query, parts.key, parts.value], attention.output.dense, head_size))
    return found


def shrink_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding only ``index`` along ``dim`` (0: output rows, 1: input columns)."""
    from transformers.pytorch_utils import prune_linear_layer

    new = prune_linear_layer(layer, index.to(layer.weight.device), dim=dim)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if new.bias is not None and layer.bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new)
                return
    raise RuntimeError("module to replace not found")

