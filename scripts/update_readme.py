"""Regenerate the README's two generated blocks: the results table and the recipe reference.

The README keeps only figures that this script derives from the latest benchmark
results (``bench/results/*.json``, written by ``make bench``; ``docs/ablate-demo-98/``,
written by ``leantrain ablate``), so a figure there cannot drift from what was measured.
``tests/test_readme.py`` fails when either block differs from what this renders.

Run after a benchmark or a recipe-key change: ``.venv/bin/python scripts/update_readme.py``
(``make bench`` runs it).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
ABLATION = ROOT / "docs" / "ablate-demo-98" / "ablation.json"
BLOCKS = {"results": ("<!-- results:start -->\n", "<!-- results:end -->"),
          "reference": ("<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"),
          "llm-demo": ("<!-- llm-demo:start -->\n", "<!-- llm-demo:end -->")}
LLM_DEMO = RESULTS / "demo_llm.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _per_round(rounds: list[dict], name: str, key: str = "train_seconds") -> list[float]:
    return [r[name][key] / r["leantrain"][key] for r in rounds if name in r and "leantrain" in r]


def _spread(values: list[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def render_results() -> str:
    """One table of current, measured figures, each naming the file it came from."""
    speed, accuracy = _load(RESULTS / "speed.json"), _load(RESULTS / "accuracy.json")
    fullft, mfu, ladder = _load(RESULTS / "fullft.json"), _load(RESULTS / "mfu.json"), _load(ABLATION)
    med, rounds = speed["medians"], speed["rounds"]
    best = statistics.median(_per_round(rounds, "hf-best"))
    tutorial = statistics.median(_per_round(rounds, "hf-tutorial"))
    # The hand loop's overhead is leantrain's time over the loop's, per round.
    overhead = [1 / r - 1 for r in _per_round(rounds, "hand")]
    wall = _per_round(rounds, "hf-best", "wall_seconds")
    whole = accuracy["runs"]
    dollars = [r["demo_dollar_fraction"] for r in fullft["per_round"]]
    rungs = {r["kind"]: r for r in ladder["rungs"]}
    base = rungs["baseline"]
    demo = [r for r in ladder["rungs"] if r["kind"] != "baseline" and r["kind"] != "alone"][-1]
    whole_run = [r for r in mfu["runs"] if "whole" in r["run"]]
    rows = [
        ("train time vs HF Trainer + PEFT at its best settings (dynamic padding, `group_by_length`, bf16), "
         f"{speed['steps']} steps", f"**{best:.2f}x** faster (rounds {_spread(_per_round(rounds, 'hf-best'))})",
         "`bench/results/speed.json`"),
        ("whole process (imports, tokenization, model load, training, eval), same",
         f"{statistics.median(wall):.2f}x faster (medians {med['leantrain']['wall_seconds']:.1f} vs "
         f"{med['hf-best']['wall_seconds']:.1f} s)", "`bench/results/speed.json`"),
        (f"whole recipe ({whole['leantrain']['steps']} steps): accuracy, leantrain vs that Trainer",
         f"{whole['leantrain']['accuracy']:.3f} vs {whole['hf-best']['accuracy']:.3f} "
         f"({whole['leantrain']['train_seconds']:.1f} vs {whole['hf-best']['train_seconds']:.1f} s of training)",
         "`bench/results/accuracy.json`"),
        ("train time vs a tutorial-style Trainer (padding to `max_length`, fp32)", f"{tutorial:.2f}x faster",
         "`bench/results/speed.json`"),
        ("per-step time vs a hand-written PyTorch loop with the same kernels", f"{statistics.median(overhead) * 100:+.1f}% "
         f"(rounds {' / '.join(f'{o * 100:+.1f}%' for o in overhead)}: noise larger than any overhead)", "`bench/results/speed.json`"),
        ("dollars to reach a full fp32 fine-tune's accuracy (-1 point)",
         f"**{statistics.median(dollars):.3f}x** (rounds {_spread(dollars, 3)})", "`bench/results/fullft.json`"),
        (f"accounted peak memory, demo cuts vs full fp32 fine-tune ({ladder['mode']['steps']}-step ladder)",
         f"{demo['peak_memory_bytes'] / 1e6:.0f} vs {base['peak_memory_bytes'] / 1e6:.0f} MB "
         f"({demo['peak_memory_bytes'] / base['peak_memory_bytes']:.2f}x)", "`docs/ablate-demo-98/ablation.json`"),
        ("samples/s, same ladder", f"{demo['samples_per_second']:.1f} vs {base['samples_per_second']:.1f} "
         f"({demo['samples_per_second'] / base['samples_per_second']:.2f}x)", "`docs/ablate-demo-98/ablation.json`"),
    ]
    if whole_run:
        rows.append(("MFU of the whole demo run vs this CPU's measured bf16 matmul peak",
                     f"{whole_run[0]['mfu_vs_bf16_peak'] * 100:.1f}%", "`bench/results/mfu.json`"))
    m = speed["machine"]
    lines = [f"Measured on {m['cpu']}, {m['cores']} cores, no GPU; torch {m['packages']['torch']}, transformers "
             f"{m['packages']['transformers']}; leantrain commit {m['commit']}. "
             "Fresh processes, alternating rounds, medians. These figures are for the **demo recipe, whose cuts were "
             "chosen by hand for the demo data**; the second table is the recipe a user writes first, on data the "
             "project was never tuned on (`docs/benchmarks.md`, \"The plain recipe\").", "",
             "| comparison (demo task) | measured | source |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines + [""] + _plain_rows()) + "\n"


def _plain_rows() -> list[str]:
    """The plain recipe (LoRA r=8 on query/value + bf16) on the held-out sets, and what
    `leantrain tune` found there."""
    plain = _load(RESULTS / "plain-recipe.json")
    tune = _load(RESULTS / "tune-heldout.json") if (RESULTS / "tune-heldout.json").exists() else {"sets": {}}
    m = plain["machine"]
    lines = [f"Plain recipe (LoRA r=8 on query/value, bf16, batch 32, one epoch) measured on {m['cpu']}, {m['cores']} cores; "
             f"leantrain commit {m['commit']}; per-round ratios, Trainer time over leantrain's.", "",
             "| plain recipe, held-out set | whole process vs Trainer + PEFT | per step | accuracy | `leantrain tune` to the "
             "Trainer's accuracy: the returned recipe run afresh, whole process vs one Trainer run; the search's cost |",
             "|---|---|---|---|---|"]
    for name, found in plain["sets"].items():
        med = found["median"]
        tuned = tune["sets"].get(name)
        tune_cell = "not run"
        if tuned and tuned.get("rerun"):
            tune_cell = (f"{tuned['rerun_whole_process_over_trainer']:.2f}x of the Trainer's dollars "
                         f"({tuned['rerun']['wall_seconds']:.1f} vs {med['trainer']['wall_seconds']:.1f} s, accuracy "
                         f"{tuned['rerun']['accuracy']:.3f}); search {tuned['search_in_trainer_runs']:.1f} Trainer runs")
        lines.append(f"| {name} | {found['speedup_whole_process']:.2f}x (rounds {_spread(found['speedup_whole_process_rounds'])}) "
                     f"| {found['speedup_per_step']:.2f}x (rounds {_spread(found['speedup_per_step_rounds'])}) | "
                     f"{med['leantrain']['accuracy']:.3f} vs {med['trainer']['accuracy']:.3f} | {tune_cell} |")
    return lines


def _epochs(count: float) -> str:
    text = f"{count:g}"
    return f"{text} epoch" + ("" if text == "1" else "s")


def render_llm_demo() -> str:
    """The LLM demo's before/after (``examples/before_after.py --save``)."""
    demo = _load(LLM_DEMO)
    before, after = demo["before"], demo["after"]
    lines = [f"Measured on {demo['cpu']}, 2 cores, no GPU; leantrain commit {demo['commit']}; "
             f"{demo['steps']} steps, {demo['train_seconds']:.0f} s of training, ${demo['cost_usd']:.4f}. "
             f"{demo['eval_rows']} held-out conversations; always answering the most common library "
             f"({demo['majority_label']}) would score {demo['majority_rate']:.3f}.", "",
             f"| held-out | before (SmolLM2-135M-Instruct) | after (LoRA, {_epochs(demo['epochs'])}) |", "|---|---|---|"]
    for key in ("perplexity", "exact_match", "contains"):
        lines.append(f"| {key} | {before[key]:.3f} | {after[key]:.3f} |")
    lines.append("")
    lines.append("Generated replies, before and after: `python examples/before_after.py runs/demo-llm`.")
    return "\n".join(lines) + "\n"


def render(name: str) -> str:
    if name == "results":
        return render_results()
    if name == "llm-demo":
        return render_llm_demo()
    from leantrain.recipe import reference_markdown

    return reference_markdown()


def block(text: str, name: str) -> str:
    start, end = BLOCKS[name]
    return text.split(start, 1)[1].split(end, 1)[0]


def main() -> None:
    text = README.read_text(encoding="utf-8")
    for name, (start, end) in BLOCKS.items():
        head, rest = text.split(start, 1)
        text = head + start + render(name) + end + rest.split(end, 1)[1]
    README.write_text(text, encoding="utf-8")
    print(f"updated the results table and the recipe reference in {README}")


if __name__ == "__main__":
    main()
