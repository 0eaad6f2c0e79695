"""``leantrain report``: a run's or an ablation's figures as one HTML file and as Markdown.

The HTML embeds every plot as a base64 PNG and its style inline, so the file can be
mailed, archived or opened on a machine without network. The Markdown (with the PNGs in
``report_files/``) is for pull requests and wikis.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from leantrain.errors import UserError
from leantrain.observe.runlog import is_run_dir, run_view
from leantrain.report.plots import ablation_plots, png_bytes, run_plots
from leantrain.report.tables import ablation_table, html_table, markdown_table, run_table

ABLATION_FILE = "ablation.json"
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}.note{color:#555;font-size:.9em}"""


def _ablation_content(path: Path) -> tuple[str, str, tuple, list, list[str]]:
    ablation = json.loads((path / ABLATION_FILE).read_text(encoding="utf-8"))
    mode = ablation.get("mode", {})
    goal = (f"{mode['steps']} optimizer steps per rung" if "steps" in mode and "target" not in mode
            else f"time to {mode['target']['metric']} = {mode['target']['value']}")
    notes = [f"Recipe {ablation.get('recipe')}; {goal}; dollars at ${ablation.get('price_per_hour')}/h "
             f"({ablation.get('price_source')}).",
             "Each rung ran in a fresh process; ratios are against the first rung (the baseline)."]
    methods = {r.get("peak_memory_method") for r in ablation.get("rungs", []) if r.get("peak_memory_method")}
    notes += [f"Peak memory: {m}." for m in sorted(methods)]
    loads = [r["load_average"] for r in ablation.get("rungs", []) if r.get("load_average") is not None]
    if loads:  # speed and dollars from a busy machine must say so
        notes.append(f"1-minute load average after each rung: {min(loads):.1f} to {max(loads):.1f} "
                     f"on {ablation.get('cpu_count') or '?'} CPUs.")
    return f"Ablation: {path.name}", "ablation", ablation_table(ablation), ablation_plots(ablation), notes


def _run_content(path: Path) -> tuple[str, str, tuple, list, list[str]]:
    view = run_view(path)
    notes = [f"Dollars at ${view['price_per_hour']}/h (hardware.price_per_hour)."]
    return f"Run: {path.name}", "run", run_table(view), run_plots(view), notes


def write_report(path: str | Path, output: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``report_files/*.png`` for a run or an
    ablation directory (into ``output``, default the directory itself)."""
    path = Path(path)
    if (path / ABLATION_FILE).is_file():
        title, kind, table, plots, notes = _ablation_content(path)
    elif path.is_dir() and is_run_dir(path):
        title, kind, table, plots, notes = _run_content(path)
    else:
        raise UserError(f"report: {path} is neither a run directory (metrics.jsonl, summary.json) "
                        f"nor an ablation directory ({ABLATION_FILE})")
    out = Path(output) if output else path
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (name, figure) in enumerate(plots, 1):
        data = png_bytes(figure)
        (files / f"{i:02d}-{name}.png").write_bytes(data)
        images.append((name, f"report_files/{i:02d}-{name}.png", data))

    md = [f"# {title}", "", *[f"{n}  " for n in notes], "", markdown_table(*table), ""]
    md += [f"![{name}]({rel})\n" for name, rel, _ in images]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")

    imgs = "".join(f'<img class="plot" alt="{html.escape(name)}" src="data:image/png;base64,'
                   f'{base64.b64encode(data).decode()}">' for name, _, data in images)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body data-report="{kind}"><h1>{html.escape(title)}</h1>'
            + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
            + html_table(*table) + imgs + "</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    return {"html": out / "report.html", "markdown": out / "report.md", "plots": files}
