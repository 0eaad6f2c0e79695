"""What one cut did in an ablation, in words and figures: for method cards and reports.

Two comparisons per cut, because they can disagree: the cut alone against the baseline,
and the rung that added it against the rung before (what it adds on top of the cuts
already layered). A cut "pays off" when it saves memory or dollars without costing
quality; anything else is said plainly, since a cut that did not pay off on this model
and machine is a finding too.
"""
from __future__ import annotations

# Relative changes smaller than this are noise on a shared machine, not a finding.
NOISE = 0.05
# An accuracy-like metric that drops by more than this is a quality cost.
QUALITY_TOLERANCE = 0.02


def _finished(ablation: dict) -> list[dict]:
    return [r for r in ablation.get("rungs", []) if r.get("status") not in (None, "failed")]


def comparisons(ablation: dict, cut: str) -> list[tuple[str, dict, dict]]:
    """(what is compared, before, after) pairs that isolate ``cut`` in this ablation."""
    rungs = _finished(ablation)
    by_cuts = {(r["kind"] == "alone", tuple(r["cuts"])): r for r in rungs if r["kind"] in ("cumulative", "alone")}
    baseline = next((r for r in rungs if r["kind"] == "baseline"), None)
    pairs = []
    alone = by_cuts.get((True, (cut,))) or by_cuts.get((False, (cut,)))
    if baseline and alone:
        pairs.append((f"{baseline['name']} → {alone['name']}", baseline, alone))
    for r in rungs:
        if r["kind"] == "cumulative" and len(r["cuts"]) > 1 and r["cuts"][-1] == cut:
            before = by_cuts.get((False, tuple(r["cuts"][:-1])))
            if before:
                pairs.append((f"{before['name']} → {r['name']}", before, r))
    return pairs


def _change(before: float | None, after: float | None) -> float | None:
    return after / before if before and after is not None else None


def _cells(before: dict, after: dict) -> list[str]:
    def pair(key, scale, fmt):
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            return "n/a"
        ratio = _change(b, a)
        return f"{fmt.format(b / scale)} → {fmt.format(a / scale)}" + (f" ({ratio:.3g}x)" if ratio is not None else "")

    metric = after.get("metric") or "metric"
    b, a = before.get("metric_value"), after.get("metric_value")
    quality = "n/a" if b is None or a is None else f"{metric} {b:.3f} → {a:.3f}"
    return [pair("peak_memory_bytes", 1e6, "{:.0f} MB"), pair("samples_per_second", 1, "{:.1f}"),
            pair("cost_usd", 1, "${:.5f}"), pair("trainable_params", 1, "{:,.0f}"), quality]


def verdict(before: dict, after: dict) -> str:
    """One sentence: did the cut pay off in this comparison, and if not, why not."""
    memory = _change(before.get("peak_memory_bytes"), after.get("peak_memory_bytes"))
    dollars = _change(before.get("cost_usd"), after.get("cost_usd"))
    gains, losses = [], []
    if memory is not None and memory < 1 - NOISE:
        gains.append(f"{(1 - memory) * 100:.0f}% less memory")
    elif memory is not None and memory > 1 + NOISE:
        losses.append(f"{(memory - 1) * 100:.0f}% more memory")
    if dollars is not None and dollars < 1 - NOISE:
        gains.append(f"{(1 - dollars) * 100:.0f}% fewer dollars")
    elif dollars is not None and dollars > 1 + NOISE:
        losses.append(f"{(dollars - 1) * 100:.0f}% more dollars (slower steps)")
    b, a, metric = before.get("metric_value"), after.get("metric_value"), after.get("metric") or ""
    if b is not None and a is not None:
        worse = (b - a) if metric not in ("loss", "perplexity") else (a - b) / max(abs(b), 1e-9)
        if worse > QUALITY_TOLERANCE:
            losses.append(f"{metric} {b:.3f} → {a:.3f}")
    if gains and not losses:
        return "Paid off: " + ", ".join(gains) + "."
    if gains:
        return "Mixed: " + ", ".join(gains) + "; but " + ", ".join(losses) + "."
    if losses:
        return "Did not pay off here: " + ", ".join(losses) + "."
    return "Did not pay off here: no change in memory or dollars beyond the noise (±5%)."


def findings_markdown(ablation: dict, cut: str) -> str | None:
    """A Markdown table and verdicts for ``cut``, or None if the ablation did not isolate it."""
    pairs = comparisons(ablation, cut)
    if not pairs:
        return None
    lines = ["| comparison | peak memory | samples/s | dollars | trainable params | quality |",
             "|---|---|---|---|---|---|"]
    for label, before, after in pairs:
        lines.append("| " + " | ".join([label] + _cells(before, after)) + " |")
    lines.append("")
    for label, before, after in pairs:
        lines.append(f"- {label}: {verdict(before, after)}")
    return "\n".join(lines)
