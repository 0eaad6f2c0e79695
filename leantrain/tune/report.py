"""What `leantrain tune` leaves behind: the winning recipe as YAML, the trials table, the
Pareto front of dollars vs metric, and a plot of it (DIR/tune.json, best.yaml, report.md,
cost_vs_metric.png)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from leantrain.recipe import apply_overrides


def _rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({"trial": t.number, "state": t.state.name, "status": a.get("status", t.state.name.lower()),
                     "sets": a.get("sets"), "run_dir": a.get("run_dir"), "metric": a.get("metric"), "cost_usd": a.get("cost_usd"),
                     "cost_to_target_usd": a.get("cost_to_target_usd"), "seconds": a.get("seconds"),
                     "steps": a.get("steps"), "skipped": a.get("skipped"), "error": a.get("error"),
                     "resumed_from_trial": a.get("resumed_from_trial")})
    return rows


def pareto_front(rows: list[dict], higher_is_better: bool) -> list[dict]:
    """Finished trials no other finished trial beats on both dollars and metric."""
    done = [r for r in rows if r["metric"] is not None and r["cost_usd"] is not None and r["status"] != "failed"]
    better = (lambda a, b: a >= b) if higher_is_better else (lambda a, b: a <= b)

    def dominated(r):
        return any(o is not r and o["cost_usd"] <= r["cost_usd"] and better(o["metric"], r["metric"])
                   and (o["cost_usd"] < r["cost_usd"] or o["metric"] != r["metric"]) for o in done)

    return sorted((r for r in done if not dominated(r)), key=lambda r: r["cost_usd"])


def _winner(settings, rows: list[dict], front: list[dict]) -> dict | None:
    if settings.target is None:  # the cheapest point of the front that is best on the metric
        key = (lambda r: (-r["metric"], r["cost_usd"])) if settings.higher_is_better else (lambda r: (r["metric"], r["cost_usd"]))
        return min(front, key=key) if front else None
    reached = [r for r in rows if r["cost_to_target_usd"] is not None]
    return min(reached, key=lambda r: r["cost_to_target_usd"]) if reached else None


def _best_yaml(settings, winner: dict) -> str:
    data = yaml.safe_load(Path(settings.recipe).read_text(encoding="utf-8")) or {}
    stop_at_target = []
    if settings.target is not None:
        # Stop where the search measured the cost, on the same schedule: at the first
        # evaluation reaching the target (patience long enough never to stop before it).
        every = settings.eval_every or data.get("train", {}).get("eval_every")
        patience = max(3, winner["steps"] // every + 1) if every else 1000
        stop_at_target = ["cuts.early_stopping.enabled=true", f"cuts.early_stopping.metric={settings.metric}",
                          f"cuts.early_stopping.mode={'max' if settings.higher_is_better else 'min'}",
                          f"cuts.early_stopping.target={settings.target}", f"cuts.early_stopping.patience={patience}"]
        stop_at_target += [f"train.eval_every={settings.eval_every}"] if settings.eval_every else []
    data = apply_overrides(data, list(settings.overrides) + list(winner["sets"]) + stop_at_target)
    goal = (f"reached {settings.metric}={winner['metric']:.4g} (target {settings.target}) at step {winner['steps']} "
            f"for ${winner['cost_to_target_usd']:.6f}" if settings.target is not None
            else f"{settings.metric}={winner['metric']:.4g} for ${winner['cost_usd']:.6f}")
    head = f"# leantrain tune: trial {winner['trial']} of {settings.recipe}; {goal}\n"
    return head + yaml.safe_dump(data, sort_keys=False)


def _plot(rows: list[dict], front: list[dict], settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["metric"] is not None and r["cost_usd"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["cost_usd"] for r in done], [r["metric"] for r in done], c="#999", label="trials")
    ax.plot([r["cost_usd"] for r in front], [r["metric"] for r in front], "o-", c="#c33", label="Pareto front")
    if settings.target is not None:
        ax.axhline(settings.target, ls="--", c="#36c", label=f"target {settings.target}")
    ax.set_xlabel("trial cost (USD, whole process)")
    ax.set_ylabel(settings.metric)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(result: dict) -> str:
    lines = [f"# leantrain tune: {result['recipe']}", "",
             f"Target: {result['target'] or 'none (Pareto front of dollars vs ' + result['metric'] + ')'}; "
             f"{len(result['trials'])} trials; the search cost ${result['search_cost_usd']:.6f} "
             f"({result['search_hours'] * 3600:.0f} s at ${result['price_per_hour']}/h).", ""]
    if result["winner"]:
        w = result["winner"]
        lines += [f"Winner: trial {w['trial']}, {result['metric']}={w['metric']:.4g}, "
                  + (f"${w['cost_to_target_usd']:.6f} to reach the target" if w.get("cost_to_target_usd") is not None
                     else f"${w['cost_usd']:.6f}") + f": `{' '.join(w['sets'])}` (best.yaml)", ""]
    elif result["target"] is not None:
        lines += ["No trial reached the target.", ""]
    lines += ["| trial | status | " + result["metric"] + " | $ trial | $ to target | s | settings |", "|---|---|---|---|---|---|---|"]
    for r in result["trials"]:
        fmt = lambda v, spec: format(v, spec) if v is not None else ""  # noqa: E731
        lines.append(f"| {r['trial']} | {r['status']}{' (' + r['skipped'] + ')' if r['skipped'] else ''} | "
                     f"{fmt(r['metric'], '.4f')} | {fmt(r['cost_usd'], '.6f')} | {fmt(r['cost_to_target_usd'], '.6f')} | "
                     f"{fmt(r['seconds'], '.1f')} | {' '.join(r['sets'] or [])} |")
    lines += ["", "Pareto front (dollars vs metric): trials " + ", ".join(str(r["trial"]) for r in result["pareto_front"]), ""]
    return "\n".join(lines)


def write_results(settings, study, space, price: float) -> dict:
    from leantrain.tune.search import spent

    rows = _rows(study)
    front = pareto_front(rows, settings.higher_is_better)
    winner = _winner(settings, rows, front)
    usd, hours = spent(study)
    result = {"recipe": settings.recipe, "metric": settings.metric, "target": settings.target,
              "price_per_hour": price, "space": space.describe(), "trials": rows, "pareto_front": front,
              "winner": winner, "search_cost_usd": round(usd, 8), "search_hours": round(hours, 6)}
    out = settings.output
    (out / "tune.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if winner:
        (out / "best.yaml").write_text(_best_yaml(settings, winner), encoding="utf-8")
    _plot(rows, front, settings, out / "cost_vs_metric.png")
    (out / "report.md").write_text(_markdown(result), encoding="utf-8")
    return result
