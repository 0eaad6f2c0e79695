"""Per-cut verdicts for method cards: which comparisons isolate a cut, and what they say."""
from __future__ import annotations

from leantrain.ablate.findings import comparisons, findings_markdown, verdict


def rung(name, kind, cuts, memory_mb, dollars, accuracy):
    return {"name": name, "kind": kind, "cuts": cuts, "status": "completed", "peak_memory_bytes": memory_mb * 1e6,
            "cost_usd": dollars, "samples_per_second": 10 / dollars, "trainable_params": 100,
            "metric": "accuracy", "metric_value": accuracy}


ABLATION = {"rungs": [
    rung("baseline", "baseline", [], 1000, 1.0, 0.80),
    rung("LoRA", "cumulative", ["lora"], 500, 0.5, 0.79),
    rung("LoRA + checkpointing", "cumulative", ["lora", "gradient_checkpointing"], 200, 0.65, 0.79),
    rung("checkpointing only", "alone", ["gradient_checkpointing"], 400, 1.3, 0.80),
    rung("bf16 only", "alone", ["precision"], 990, 1.02, 0.70),
    {"name": "curriculum only", "kind": "alone", "cuts": ["curriculum"], "status": "failed"},
]}


def test_comparisons_isolate_a_cut_alone_and_on_top_of_the_previous_rung():
    pairs = comparisons(ABLATION, "gradient_checkpointing")
    assert [(b["name"], a["name"]) for _, b, a in pairs] == [("baseline", "checkpointing only"),
                                                           ("LoRA", "LoRA + checkpointing")]
    # The first cut of the ladder has no "alone" rung: its first cumulative rung is it alone.
    assert [(b["name"], a["name"]) for _, b, a in comparisons(ABLATION, "lora")] == [("baseline", "LoRA")]
    assert comparisons(ABLATION, "curriculum") == []  # its rung failed
    assert findings_markdown(ABLATION, "warm_start") is None


def test_verdicts_say_when_a_cut_did_not_pay_off():
    base, lora, both, ckpt, bf16 = ABLATION["rungs"][:5]
    assert verdict(base, lora) == "Paid off: 50% less memory, 50% fewer dollars."
    assert verdict(base, ckpt) == "Mixed: 60% less memory; but 30% more dollars (slower steps)."
    assert verdict(base, bf16) == "Did not pay off here: accuracy 0.800 → 0.700."
    same = dict(base, cost_usd=1.01)
    assert verdict(base, same).startswith("Did not pay off here: no change")
    table = findings_markdown(ABLATION, "gradient_checkpointing")
    assert "1000 MB → 400 MB (0.4x)" in table and "500 MB → 200 MB (0.4x)" in table
