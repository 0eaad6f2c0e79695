"""Pruning: remove FFN neurons and attention heads for real, or zero single weights.

Structured pruning deletes rows of the producing Linear layers and the matching columns
of the consuming one, so the model does fewer FLOPs and its file shrinks; a mask alone
would do neither. Unstructured (global magnitude) pruning only zeros weights: it helps
compression with a sparse format or a later structured step, not dense CPU latency, and
this module says so in what it returns.

Importance scores: ``weight`` needs no data (a neuron's incoming row norm times its
outgoing column norm); ``activation`` runs calibration batches and scores each neuron by
its mean absolute activation times its outgoing column norm, which follows what the
model actually uses on the task.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from leantrain.compress.structure import (
    Attention, FeedForward, attentions, feed_forwards, replace_module, shrink_linear, unwrap,
)
from leantrain.errors import UserError

IMPORTANCE = ("weight", "activation")


def _check_fraction(fraction: float, what: str) -> None:
    if not 0 <= fraction < 1:
        raise UserError(f"{what}: the fraction to prune must be in [0, 1), got {fraction}")


@torch.no_grad()
def _mean_abs_inputs(model: nn.Module, layers: list[nn.Linear], batches: Iterable[dict]) -> list[torch.Tensor]:
    """Mean |input| per input feature of each layer in ``layers``, over the calibration batches."""
    sums = [torch.zeros(layer.in_features, dtype=torch.float64) for layer in layers]
    counts = [0] * len(layers)

    def hook_for(i):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[i] += x.abs().sum(0).double().cpu()
            counts[i] += x.shape[0]
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not any(counts):
        raise UserError("activation importance needs at least one calibration batch")
    return [(s / max(c, 1)).float() for s, c in zip(sums, counts)]


def _feature_scores(model, producers: list[list[nn.Linear]], consumers: list[nn.Linear], importance: str,
                    batches) -> list[torch.Tensor]:
    """Per input feature of each consumer: (activity or incoming row norms) x outgoing column norm."""
    if importance not in IMPORTANCE:
        raise UserError(f"importance {importance!r}: use one of {', '.join(IMPORTANCE)}")
    outgoing = [layer.weight.detach().float().norm(dim=0).cpu() for layer in consumers]
    if importance == "activation":
        incoming = _mean_abs_inputs(model, consumers, batches or [])
    else:
        incoming = [sum(p.weight.detach().float().norm(dim=1).cpu() for p in group) for group in producers]
    return [i * o for i, o in zip(incoming, outgoing)]


def ffn_scores(model: nn.Module, importance: str = "weight", batches: Iterable[dict] | None = None) -> list[torch.Tensor]:
    """One score per FFN neuron per block; a low score means the neuron matters little."""
    ffns = feed_forwards(model)
    return _feature_scores(model, [ff.up for ff in ffns], [ff.down for ff in ffns], importance, batches)


def head_scores(model: nn.Module, importance: str = "weight", batches: Iterable[dict] | None = None) -> list[torch.Tensor]:
    """One score per attention head per block (summed neuron scores of the head's slice)."""
    atts = attentions(model)
    per_feature = _feature_scores(model, [a.qkv for a in atts], [a.out for a in atts], importance, batches)
    return [f.reshape(a.heads, a.head_size).sum(1) for f, a in zip(per_feature, atts)]


def keep_count(width: int, fraction: float) -> int:
    """How many of ``width`` units survive pruning ``fraction`` of them (at least one)."""
    return max(1, width - int(round(width * fraction)))


def top_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in their original order (layout preserved)."""
    return torch.topk(scores, keep).indices.sort().values


def _shrink_ffn(root: nn.Module, ff: FeedForward, index: torch.Tensor) -> None:
    for up in ff.up:
        replace_module(root, up, shrink_linear(up, index, dim=0))
    replace_module(root, ff.down, shrink_linear(ff.down, index, dim=1))


def _shrink_heads(root: nn.Module, attention: Attention, heads: torch.Tensor) -> None:
    index = (heads[:, None] * attention.head_size + torch.arange(attention.head_size)).reshape(-1)
    for proj in attention.qkv:
        replace_module(root, proj, shrink_linear(proj, index, dim=0))
    replace_module(root, attention.out, shrink_linear(attention.out, index, dim=1))


def _prune_units(model, parts: list, widths: int, scores: list[torch.Tensor], fraction: float, keep: int | None,
                 shrink, what: str) -> tuple[nn.Module, int]:
    """Shrink every block's ``parts`` to its ``keep`` best-scored units; returns (root, keep)."""
    _check_fraction(fraction, what)
    keep = keep if keep is not None else keep_count(widths, fraction)
    root = unwrap(model)
    for part, score in zip(parts, scores):
        shrink(root, part, top_indices(score, keep))
    return root, keep


def prune_ffn(model: nn.Module, fraction: float, importance: str = "weight",
              batches: Iterable[dict] | None = None, scores: list[torch.Tensor] | None = None,
              keep: int | None = None) -> dict:
    """Remove ``fraction`` of the FFN neurons of every block (or keep ``keep``), lowest score first.

    Every block keeps the same number of neurons so that ``config.intermediate_size``
    stays one number and ``from_pretrained`` loads the result without leantrain.
    """
    ffns = feed_forwards(model)
    before = ffns[0].width
    scores = scores if scores is not None else ffn_scores(model, importance, batches)
    root, keep = _prune_units(model, ffns, before, scores, fraction, keep, _shrink_ffn, "FFN pruning")
    root.config.intermediate_size = keep
    return {"ffn_neurons_before": before, "ffn_neurons_after": keep, "ffn_fraction_removed": round(1 - keep / before, 4)}


def prune_heads(model: nn.Module, fraction: float, importance: str = "weight",
                batches: Iterable[dict] | None = None, scores: list[torch.Tensor] | None = None,
                keep: int | None = None) -> dict:
    """Remove ``fraction`` of each block's attention heads (or keep ``keep``): q/k/v rows, output columns.

    The attention forward infers the head count from the projection width, so the
    shrunk model runs as is; it reloads through :func:`leantrain.compress.load_compressed`,
    which sizes each Linear from the saved tensors.
    """
    atts = attentions(model)
    before = atts[0].heads
    scores = scores if scores is not None else head_scores(model, importance, batches)
    root, keep = _prune_units(model, atts, before, scores, fraction, keep, _shrink_heads, "head pruning")
    for attention in attentions_modules(root):
        attention.num_attention_heads = keep
        attention.all_head_size = keep * attention.attention_head_size
    return {"heads_before": before, "heads_after": keep, "heads_fraction_removed": round(1 - keep / before, 4)}


def attentions_modules(root: nn.Module) -> list[nn.Module]:
    """The BERT self-attention modules (their head-count attributes describe the new width)."""
    return [m for m in root.modules() if hasattr(m, "attention_head_size") and hasattr(m, "num_attention_heads")]


def prune_magnitude(model: nn.Module, fraction: float) -> dict:
    """Zero the ``fraction`` of block Linear weights with the smallest |w|, globally.

    Uses ``torch.nn.utils.prune.global_unstructured`` and then makes it permanent
    (``prune.remove``), so the model keeps its plain parameter names and saves as usual.
    """
    import torch.nn.utils.prune as torch_prune

    _check_fraction(fraction, "magnitude pruning")
    targets = [(layer, "weight") for ff in feed_forwards(model) for layer in (*ff.up, ff.down)]
    try:
        targets += [(layer, "weight") for a in attentions(model) for layer in (*a.qkv, a.out)]
    except UserError:
        pass  # attention layout not recognised: prune the FFNs only
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=fraction)
    for layer, name in targets:
        torch_prune.remove(layer, name)
    total = sum(layer.weight.numel() for layer, _ in targets)
    zeros = sum(int((layer.weight == 0).sum()) for layer, _ in targets)
    return {"sparsity": round(zeros / total, 4), "pruned_weights": total}
