"""The report's plots, drawn with matplotlib's object API (no pyplot: no global state, no
display; the Agg canvas renders PNG bytes on a machine without a screen)."""
from __future__ import annotations

import io

from matplotlib.figure import Figure

# Eval fields that are not quality metrics to chart.
NOT_METRICS = {"event", "step", "epoch", "wall_seconds", "loss", "majority_class_accuracy"}
MB = 1e6


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(title: str, xlabel: str, ylabel: str, size=(6.4, 3.6)):
    figure = Figure(figsize=size)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


# -- one run --------------------------------------------------------------------------

def loss_plot(view: dict) -> Figure | None:
    if not view["train"] and not view["eval"]:
        return None
    figure, axes = _figure("Loss", "optimizer step", "loss")
    axes.plot(*_series(view["train"], "loss"), label="train", color="tab:blue")
    axes.plot(*_series(view["eval"], "loss"), "o-", label="eval", color="tab:orange")
    axes.legend()
    return figure


def metric_plot(view: dict) -> Figure | None:
    names = sorted({k for r in view["eval"] for k, v in r.items() if k not in NOT_METRICS and isinstance(v, (int, float))})
    if not names:
        return None
    figure, axes = _figure("Eval metrics", "optimizer step", "value")
    for name in names:
        axes.plot(*_series(view["eval"], name), "o-", label=name)
    steps, majority = _series(view["eval"], "majority_class_accuracy")
    if majority:
        axes.axhline(majority[-1], linestyle=":", color="grey", label="majority class")
    axes.legend()
    return figure


def _line_plot(view: dict, key: str, title: str, ylabel: str, color: str, scale: float = 1.0) -> Figure | None:
    steps, values = _series(view["train"], key)
    if not values:
        return None
    figure, axes = _figure(title, "optimizer step", ylabel)
    axes.plot(steps, [v / scale for v in values], color=color)
    axes.set_ylim(bottom=0)
    return figure


def throughput_plot(view: dict) -> Figure | None:
    return _line_plot(view, "samples_per_second", "Throughput", "samples / s", "tab:green")


def memory_plot(view: dict) -> Figure | None:
    breakdown = {k: v for k, v in (view.get("memory_breakdown") or {}).items() if k != "total"}
    if breakdown:
        figure, axes = _figure("Peak memory, by kind", "MB", "", size=(6.4, 2.8))
        axes.barh(list(breakdown), [v / MB for v in breakdown.values()], color="tab:purple")
        axes.set_title(f"Peak tensor memory: {sum(breakdown.values()) / MB:.0f} MB")
        return figure
    return _line_plot(view, "peak_rss_bytes", "Peak process memory (RSS)", "MB", "tab:purple", scale=MB)


def spend_plot(view: dict) -> Figure | None:
    steps, dollars = _series(view["train"], "dollars")
    if not dollars:
        return None
    title = "Spend against budget" if view.get("budget_usd") else "Spend (no budget.max_usd set)"
    figure, axes = _figure(title, "optimizer step", "US dollars")
    axes.plot([0] + steps, [0.0] + dollars, color="tab:red", label="spent")
    total = view.get("total_steps")
    if total and steps[-1] < total and steps[-1] > 0:
        axes.plot([steps[-1], total], [dollars[-1], dollars[-1] / steps[-1] * total], "--", color="tab:red",
                  label="projected")
    if view.get("budget_usd"):
        axes.axhline(view["budget_usd"], color="black", linestyle=":", label=f"budget ${view['budget_usd']}")
    axes.legend()
    return figure


def run_plots(view: dict) -> list[tuple[str, Figure]]:
    made = [("loss", loss_plot(view)), ("metrics", metric_plot(view)), ("throughput", throughput_plot(view)),
            ("memory", memory_plot(view)), ("spend", spend_plot(view))]
    return [(name, fig) for name, fig in made if fig is not None]


# -- an ablation ----------------------------------------------------------------------

def _bars(rungs: list[dict], values: list[float], title: str, xlabel: str, color: str) -> Figure:
    figure, axes = _figure(title, xlabel, "", size=(7.2, 0.45 * len(rungs) + 1.2))
    labels = [r["name"] for r in rungs]
    axes.barh(labels, values, color=color)
    axes.invert_yaxis()  # the baseline on top, as in the table
    for y, value in enumerate(values):
        axes.annotate(f"{value:.3g}", (value, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    return figure


def ablation_plots(ablation: dict) -> list[tuple[str, Figure]]:
    rungs = [r for r in ablation.get("rungs", []) if r.get("status") != "failed"]
    if not rungs:
        return []
    target = "target" in ablation.get("mode", {})
    plots = [
        ("memory", _bars(rungs, [(r.get("peak_memory_bytes") or 0) / MB for r in rungs], "Peak memory per rung", "MB", "tab:purple")),
        ("time", _bars(rungs, [(r["target"]["seconds"] or 0) if target else r.get("train_seconds") or 0 for r in rungs],
                       "Time to target (0: not reached)" if target else "Training time per rung", "seconds", "tab:blue")),
        ("dollars", _bars(rungs, [(r["target"]["cost_usd"] or 0) if target else r.get("cost_usd") or 0 for r in rungs],
                          f"Dollars per rung at ${ablation.get('price_per_hour')}/h", "US dollars", "tab:red")),
        ("throughput", _bars(rungs, [r.get("samples_per_second") or 0 for r in rungs], "Throughput per rung", "samples / s", "tab:green")),
    ]
    metric = next((r["metric"] for r in rungs if r.get("metric")), None)
    points = [(i, r) for i, r in enumerate(rungs, 1) if r.get("metric_value") is not None]
    if metric and points:
        figure, axes = _figure(f"Quality against cost: {metric}", "US dollars", metric)
        for i, r in points:
            cost = r["target"]["cost_usd"] if target and r["target"]["cost_usd"] is not None else r.get("cost_usd") or 0
            axes.scatter(cost, r["metric_value"], s=60)
            axes.annotate(f"{i}. {r['name']}", (cost, r["metric_value"]), xytext=(4, 4), textcoords="offset points", fontsize=7)
        axes.margins(x=0.2, y=0.15)  # room for the labels of the outermost points
        plots.append(("quality_vs_cost", figure))
    return plots
