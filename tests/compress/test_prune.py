"""Structured pruning really removes rows and columns and computes what masking would."""
from __future__ import annotations

import copy

import torch

from leantrain.compress import load_compressed, prune_ffn, prune_heads, prune_magnitude, save_compressed
from leantrain.compress.io import file_bytes
from leantrain.compress.prune import ffn_scores, head_scores, keep_count, top_indices
from leantrain.compress.structure import attentions, feed_forwards

META = {"task": "sequence-classification"}


def _masked_logits(model, layers, keep_per_layer, unit, batch):
    """Logits of the unpruned model with every unit outside ``keep`` zeroed at the consuming layer."""
    def hook_for(keep):
        def hook(module, args):
            mask = torch.zeros(module.in_features)
            mask[(keep[:, None] * unit + torch.arange(unit)).reshape(-1)] = 1
            return (args[0] * mask,)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(keep)) for layer, keep in zip(layers, keep_per_layer)]
    try:
        with torch.no_grad():
            return model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()


def test_ffn_pruning_shrinks_tensors_and_file_and_equals_masking(tiny_model_and_batch, tmp_path):
    model, batch = tiny_model_and_batch
    original = copy.deepcopy(model)
    scores = ffn_scores(original, "activation", [batch])
    width = feed_forwards(original)[0].width
    keep = keep_count(width, 0.3)
    expected = _masked_logits(original, [ff.down for ff in feed_forwards(original)],
                              [top_indices(s, keep) for s in scores], 1, batch)

    pruned = copy.deepcopy(model)
    info = prune_ffn(pruned, 0.3, importance="activation", batches=[batch])
    assert info["ffn_neurons_after"] == keep < width
    for ff in feed_forwards(pruned):
        assert ff.up[0].weight.shape[0] == keep and ff.up[0].bias.shape[0] == keep
        assert ff.down.weight.shape[1] == keep
    with torch.no_grad():
        assert torch.allclose(pruned(**batch).logits, expected, atol=1e-5)

    full = file_bytes(save_compressed(copy.deepcopy(model), tmp_path / "full", META))
    small = save_compressed(pruned, tmp_path / "pruned", META)
    assert file_bytes(small) < full
    reloaded, _, _ = load_compressed(small)
    assert reloaded.config.intermediate_size == keep
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, pruned(**batch).logits)


def test_head_pruning_removes_head_rows_and_reloads(tiny_model_and_batch, tmp_path):
    model, batch = tiny_model_and_batch
    original = copy.deepcopy(model)
    atts = attentions(original)
    heads, size = atts[0].heads, atts[0].head_size
    scores = head_scores(original, "weight")
    expected = _masked_logits(original, [a.out for a in atts], [top_indices(s, heads - 1) for s in scores], size, batch)

    pruned = copy.deepcopy(model)
    info = prune_heads(pruned, 1 / heads)
    assert info["heads_after"] == heads - 1
    for attention in attentions(pruned):
        assert all(p.weight.shape[0] == (heads - 1) * size for p in attention.qkv)
        assert attention.out.weight.shape[1] == (heads - 1) * size
    with torch.no_grad():
        assert torch.allclose(pruned(**batch).logits, expected, atol=1e-5)
    reloaded, _, _ = load_compressed(save_compressed(pruned, tmp_path / "heads", META))
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, pruned(**batch).logits)


def test_magnitude_pruning_zeros_the_smallest_weights_globally(tiny_model_and_batch):
    model = copy.deepcopy(tiny_model_and_batch[0])
    layers = [layer for ff in feed_forwards(model) for layer in (*ff.up, ff.down)]
    layers += [layer for a in attentions(model) for layer in (*a.qkv, a.out)]
    smallest_kept = torch.cat([layer.weight.detach().abs().reshape(-1) for layer in layers]).quantile(0.5)
    info = prune_magnitude(model, 0.5)
    assert abs(info["sparsity"] - 0.5) < 0.01
    assert dict(model.named_parameters()).keys() == dict(tiny_model_and_batch[0].named_parameters()).keys()
    survivors = torch.cat([layer.weight.detach().abs().reshape(-1) for layer in layers])
    assert survivors[survivors > 0].min() >= smallest_kept * 0.99
