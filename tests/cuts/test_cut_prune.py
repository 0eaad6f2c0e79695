"""The prune cut: gradual masks during training, a really smaller model saved at the end."""
from __future__ import annotations

import copy
import json

import torch

from leantrain import train
from leantrain.compress import load_compressed
from leantrain.compress.io import file_bytes
from leantrain.compress.structure import feed_forwards
from leantrain.cuts.prune import PruneSettings, sparsity_at


def test_schedule_rises_cubically_to_the_target_then_holds():
    cfg = PruneSettings(sparsity=0.4, start=0.1, end=0.6)
    values = [sparsity_at(p / 10, cfg) for p in range(11)]
    assert values[0] == values[1] == 0.0
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[6] == values[10] == 0.4
    assert values[2] - values[1] > values[6] - values[5]  # fast first, gentle near the end


def test_ffn_pruning_run_saves_a_smaller_model_that_predicts_like_the_run(cut_recipe, tmp_path):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"prune": {"method": "ffn", "sparsity": 0.5, "end": 0.5, "updates": 2}}
    result = train(recipe, show_progress=False)
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [round(e["sparsity"], 3) for e in events if e["event"] == "prune"][-1] == 0.5
    assert result.summary["extras"]["prune_sparsity"] == 0.5

    pruned_dir = result.run_dir / "model" / "pruned"
    model, tokenizer, _ = load_compressed(pruned_dir)
    full_width = feed_forwards(result.model)[0].width
    for ff in feed_forwards(model):
        assert ff.up[0].weight.shape[0] == ff.down.weight.shape[1] == full_width // 2
    assert file_bytes(pruned_dir) < file_bytes(result.run_dir / "model") - file_bytes(pruned_dir)

    batch = tokenizer(["the goal of the match", "bread and cheese soup"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, result.model.eval()(**batch).logits, atol=1e-5)


def test_magnitude_pruning_keeps_weights_zero_through_training(cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"prune": {"method": "magnitude", "sparsity": 0.6, "end": 0.5}}
    result = train(recipe, show_progress=False)
    weights = torch.cat([layer.weight.detach().reshape(-1) for ff in feed_forwards(result.model) for layer in (*ff.up, ff.down)])
    assert abs((weights == 0).float().mean().item() - 0.6) < 0.01
