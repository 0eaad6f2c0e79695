"""Run an ablation ladder: every rung in a fresh process, then one JSON file and a report.

Why a fresh process per rung: peak memory (RSS on CPU, the allocator's high-water mark
on CUDA) is a per-process figure, and a previous rung's caches, threads and allocator
state would leak into the next one's speed and memory. Each rung is a plain
``python -m leantrain train RECIPE --set ...``, so any rung can be re-run by hand.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from leantrain.ablate.ladder import Rung, plan_ladder
from leantrain.cuts.early_stopping import HIGHER_IS_BETTER
from leantrain.engine.resume import checkpoint_root
from leantrain.errors import UserError
from leantrain.launch.watched import EVAL_EVENTS, train_command, watch_training
from leantrain.observe.runlog import read_json, read_jsonl
from leantrain.recipe import load_recipe
from leantrain.report import ABLATION_FILE, write_report

QUALITY_METRICS = ("accuracy", "f1", "perplexity", "loss")


@dataclass
class AblationSettings:
    recipe: str
    output: Path
    steps: int | None = None
    target: tuple[str, float] | None = None
    price_per_hour: float | None = None
    gpu: str | None = None
    spot: bool = False
    cuts: list[str] | None = None
    alone: bool = True
    from_scratch: bool = False
    full_lr: float | None = None
    eval_every: int = 10
    overrides: tuple[str, ...] = ()
    resume: bool = False           # reuse rungs whose run directory already holds exactly this run, finished
    only: list[int] | None = None  # run only these rungs (1-based), e.g. to redo a failed one


def resolve_price(settings: AblationSettings, recipe_price: float) -> tuple[float, str]:
    """Dollars per hour and where the figure came from."""
    if settings.price_per_hour is not None:
        return settings.price_per_hour, "--price-per-hour"
    if settings.gpu:
        # The hardware catalog lives in leantrain.plan; imported here only when asked for.
        from leantrain.plan.catalog import hourly_price

        kind = "spot" if settings.spot else "on-demand"
        return float(hourly_price(settings.gpu, spot=settings.spot)), f"catalog: {settings.gpu} ({kind})"
    return recipe_price, "recipe hardware.price_per_hour"


def higher_is_better(metric: str) -> bool:
    return metric.lower().endswith(HIGHER_IS_BETTER)


def reached(metric: str, value: float, target: float) -> bool:
    return value >= target if higher_is_better(metric) else value <= target


def meets(record: dict, target: tuple[str, float]) -> bool:
    """Whether an evaluation line holds the target's metric at or past its value."""
    name, goal = target
    return name in record and reached(name, record[name], goal)


def first_reaching(metrics_path: Path, target: tuple[str, float]) -> dict | None:
    """The first eval line of a run whose metric meets the target, if any."""
    return next((r for r in read_jsonl(metrics_path) if r.get("event") in EVAL_EVENTS and meets(r, target)), None)


def _sets(settings: AblationSettings, rung: Rung, run_dir: Path, price: float) -> list[str]:
    common = [f"output.dir={run_dir}", "output.save_model=false", "train.checkpoint_every=null",
              "train.checkpoint_minutes=null", f"hardware.price_per_hour={price}"]
    if settings.gpu:
        common.append(f"hardware.name={settings.gpu}")
    if settings.steps:
        common.append(f"train.max_steps={settings.steps}")
    if settings.target:
        common.append(f"train.eval_every={settings.eval_every}")
    return common + list(settings.overrides) + rung.overrides


def _already_run(settings: AblationSettings, sets: list[str], run_dir: Path) -> dict | None:
    """The summary of a finished rung whose recorded recipe is exactly what this rung
    would train (same recipe file contents, overrides and price), else None."""
    summary = read_json(run_dir / "summary.json")
    done = ("completed", "early_stopped", "budget_exhausted") + (("preempted",) if settings.target else ())
    if summary.get("status") not in done or not (run_dir / "config.yaml").is_file():
        return None
    if settings.target and summary["status"] == "preempted" and not first_reaching(run_dir / "metrics.jsonl", settings.target):
        return None
    wanted = load_recipe(settings.recipe, sets).to_run_yaml()
    return summary if (run_dir / "config.yaml").read_text(encoding="utf-8") == wanted else None


def _run_process(cmd: list[str], run_dir: Path, target: tuple[str, float] | None) -> tuple[int, float, float, bool]:
    """Run one rung; with a target, stop it (SIGTERM: a clean stop) once an evaluation meets it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cpu_before = _children_cpu_seconds()
    code, stopped_at_target = watch_training(cmd, run_dir / "ablate.log", run_dir / "metrics.jsonl",
                                             lambda line: target is not None and meets(line, target), poll_seconds=0.5)
    return code, time.perf_counter() - started, _children_cpu_seconds() - cpu_before, stopped_at_target


def _children_cpu_seconds() -> float:
    """CPU seconds of finished child processes: unlike wall time, barely inflated when
    other jobs share the machine, so it still ranks rungs on a busy box."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _quality(evaluation: dict, target: tuple[str, float] | None) -> tuple[str | None, float | None]:
    names = ([target[0]] if target else []) + list(QUALITY_METRICS)
    for name in names:
        if name in evaluation:
            return name, evaluation[name]
    return None, None


def _tokens_per_second(summary: dict) -> float | None:
    tokens, epochs = (summary.get("data") or {}).get("tokens_train"), summary.get("epochs")
    seconds = summary.get("train_seconds")
    return round(tokens * epochs / seconds, 1) if tokens and epochs and seconds else None


def _row(rung: Rung, run_dir: Path, summary: dict, price: float, settings: AblationSettings) -> dict:
    steps = summary.get("steps", 0)
    seconds = summary.get("train_seconds", 0.0)
    metric, value = _quality(summary.get("eval", {}), settings.target)
    row = {
        **asdict(rung),
        "run_dir": str(run_dir),
        "status": summary.get("status"),
        "stop_reason": summary.get("stop_reason"),
        "steps": steps,
        "samples_seen": summary.get("samples_seen"),
        "peak_memory_bytes": summary.get("peak_memory_bytes"),
        "peak_memory_method": summary.get("peak_memory_method"),
        "peak_rss_bytes": summary.get("peak_rss_bytes"),
        "memory_breakdown": (summary.get("extras") or {}).get("memory_breakdown"),
        "samples_per_second": summary.get("samples_per_second"),
        # Real (unpadded) training tokens per second: what compares a packed rung, whose
        # "sample" is a row of several documents, with an unpacked one.
        "tokens_per_second": _tokens_per_second(summary),
        "train_seconds": seconds,
        "seconds_per_step": round(seconds / steps, 4) if steps else None,
        "data_wait_fraction": summary.get("data_wait_fraction"),
        "price_per_hour": price,
        "cost_usd": round(price * seconds / 3600, 6),
        "trainable_params": summary.get("trainable_params"),
        "total_params": summary.get("total_params"),
        "eval": summary.get("eval", {}),
        "metric": metric,
        "metric_value": value,
    }
    if settings.target:
        hit = first_reaching(run_dir / "metrics.jsonl", settings.target)
        # Wall time from the first step to the evaluation that met the target: the
        # evaluations it took to notice are part of what reaching it cost.
        row["target"] = {
            "metric": settings.target[0], "value": settings.target[1], "reached": hit is not None,
            "step": hit["step"] if hit else None,
            "seconds": hit["wall_seconds"] if hit else None,
            "cost_usd": round(price * hit["wall_seconds"] / 3600, 6) if hit else None,
        }
        if hit:  # the rung's quality is the one it had when it reached the target
            row["status"] = "reached_target"
            row["metric_value"] = hit[settings.target[0]]
    return row


def _run_rung(settings: AblationSettings, rung: Rung, run_dir: Path, price: float, previous: dict, echo) -> dict:
    sets = _sets(settings, rung, run_dir, price)
    summary = _already_run(settings, sets, run_dir) if settings.resume else None
    if summary is not None:
        echo(f"  reused the finished run in {run_dir}", flush=True)
        row = _row(rung, run_dir, summary, price, settings)
        # Process figures are not in the run directory: keep those of the ablation that ran it.
        row.update({k: previous[k] for k in ("process_seconds", "process_cpu_seconds", "load_average") if k in previous})
        return row
    code, wall, cpu, at_target = _run_process(train_command(settings.recipe, sets), run_dir, settings.target)
    summary_path = run_dir / "summary.json"
    if (code == 0 or at_target) and summary_path.is_file():
        row = _row(rung, run_dir, json.loads(summary_path.read_text(encoding="utf-8")), price, settings)
        echo(f"  {row['status']}: {(row['peak_memory_bytes'] or 0) / 1e6:.0f} MB, {row['samples_per_second']} samples/s, "
             f"{row['tokens_per_second']} tokens/s, "
             f"${row['cost_usd']:.5f}, {row['metric']}={row['metric_value']}", flush=True)
    else:
        tail = (run_dir / "ablate.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        row = {**asdict(rung), "run_dir": str(run_dir), "status": "failed", "error": tail[0] if tail else f"exit {code}"}
        echo(f"  failed: {row['error']} (log: {run_dir / 'ablate.log'})", flush=True)
    if at_target:
        # The stop checkpointed like a preemption; nobody will resume a rung that met its target.
        shutil.rmtree(checkpoint_root(run_dir), ignore_errors=True)
    row["process_seconds"] = round(wall, 2)
    row["process_cpu_seconds"] = round(cpu, 2)  # the whole process: start-up and evaluation included
    # Speed figures mean little on a machine other jobs share; record how busy it was.
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


def run_ablation(settings: AblationSettings, echo=print) -> dict:
    """Run every rung, write ``ablation.json`` and ``report.html``; return the ablation."""
    if settings.steps is None and settings.target is None:
        raise UserError("ablate: give --steps N (compare after N steps) or --to-metric METRIC=VALUE (time to a target)")
    recipe = load_recipe(settings.recipe, list(settings.overrides))
    price, price_source = resolve_price(settings, recipe.hardware.price_per_hour)
    kwargs = {"full_lr": settings.full_lr} if settings.full_lr else {}
    rungs = plan_ladder(recipe, settings.cuts, alone=settings.alone, from_scratch=settings.from_scratch, **kwargs)
    out = Path(settings.output)
    out.mkdir(parents=True, exist_ok=True)
    ablation = {
        "version": 1,
        "recipe": str(settings.recipe),
        "mode": {"steps": settings.steps} if settings.target is None else
                {"target": {"metric": settings.target[0], "value": settings.target[1]}, "max_steps": settings.steps},
        "price_per_hour": price,
        "price_source": price_source,
        "hardware": settings.gpu or recipe.hardware.name,
        "cpu_count": os.cpu_count(),
        "rungs": [],
    }
    previous = {r.get("slug"): r for r in read_json(out / ABLATION_FILE).get("rungs", [])} if settings.resume else {}
    started = time.perf_counter()
    for i, rung in enumerate(rungs, 1):
        if settings.only and i not in settings.only:
            continue
        echo(f"[{i}/{len(rungs)}] {rung.name}", flush=True)
        ablation["rungs"].append(_run_rung(settings, rung, out / rung.slug, price, previous.get(rung.slug, {}), echo))
        _write(out / ABLATION_FILE, ablation)  # after every rung: a long ladder can be watched
    ablation["total_seconds"] = round(time.perf_counter() - started, 1)
    _write(out / ABLATION_FILE, ablation)
    write_report(out)
    return ablation


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
