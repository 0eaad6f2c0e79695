"""The figures of a run or an ablation as tables: one model, rendered to Markdown or HTML."""
from __future__ import annotations

import html


def _ratio(value, base) -> str:
    return f"{value / base:.2f}x" if value and base else "n/a"


def ablation_table(ablation: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: each rung's figures, with ratios against the baseline (first rung)."""
    rows = [r for r in ablation.get("rungs", []) if r.get("status") != "failed"]
    failed = [r for r in ablation.get("rungs", []) if r.get("status") == "failed"]
    target = "target" in ablation.get("mode", {})
    quality = next((r["metric"] for r in rows if r.get("metric")), "metric")
    headers = ["rung", "peak memory (MB)", "memory vs baseline", "samples/s", "speed vs baseline", "tokens/s", "s/step",
               "train s", "process CPU s", "$", "trainable params"]
    headers += [f"s to {quality} target", f"$ to {quality} target"] if target else []
    headers.append(quality)
    base = rows[0] if rows else {}
    body = []
    for r in rows:
        mem = r.get("peak_memory_bytes") or 0
        cells = [r["name"], f"{mem / 1e6:.0f}", _ratio(mem, base.get("peak_memory_bytes")),
                 f"{r.get('samples_per_second') or 0:.1f}", _ratio(r.get("samples_per_second"), base.get("samples_per_second")),
                 "n/a" if r.get("tokens_per_second") is None else f"{r['tokens_per_second']:.0f}",
                 f"{r.get('seconds_per_step') or 0:.3f}", f"{r.get('train_seconds') or 0:.1f}",
                 "n/a" if r.get("process_cpu_seconds") is None else f"{r['process_cpu_seconds']:.0f}",
                 f"{r.get('cost_usd') or 0:.5f}", f"{r.get('trainable_params') or 0:,}"]
        if target:
            hit = r.get("target") or {}
            cells += ["not reached", "n/a"] if hit.get("seconds") is None else [f"{hit['seconds']:.1f}", f"{hit['cost_usd']:.5f}"]
        value = r.get("metric_value")
        cells.append("n/a" if value is None else f"{value:.3f}")
        body.append(cells)
    for r in failed:
        body.append([r["name"], f"failed: {r.get('error', '')}"] + [""] * (len(headers) - 2))
    return headers, body


def run_table(view: dict) -> tuple[list[str], list[list[str]]]:
    """Two columns: what a run's summary says, in the order a reader asks."""
    s = view.get("summary", {})
    rows = [["status", str(view.get("status"))], ["stop reason", str(view.get("stop_reason") or "")],
            ["steps", f"{view.get('step')} of {view.get('total_steps') or '?'}"]]
    for key, value in (s.get("eval") or {}).items():
        rows.append([f"eval {key}", f"{value:.4f}" if isinstance(value, float) else str(value)])
    if s.get("train_seconds") is not None:
        rows.append(["train seconds", f"{s['train_seconds']:.1f}"])
    if view.get("samples_per_second"):
        rows.append(["samples/s", f"{view['samples_per_second']:.1f}"])
    if view.get("dollars") is not None:
        budget = f" of ${view['budget_usd']}" if view.get("budget_usd") else ""
        rows.append(["dollars", f"{view['dollars']:.5f}{budget} at ${view['price_per_hour']}/h"])
    if view.get("peak_memory_bytes"):
        rows.append(["peak memory", f"{view['peak_memory_bytes'] / 1e6:.0f} MB ({view.get('peak_memory_method')})"])
    if s.get("trainable_params") is not None:
        rows.append(["trainable params", f"{s['trainable_params']:,} of {s.get('total_params', 0):,}"])
    if s.get("cuts") is not None:
        rows.append(["cuts", ", ".join(s["cuts"]) or "none"])
    return ["", ""], rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers))] + [line(r) for r in rows])


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
