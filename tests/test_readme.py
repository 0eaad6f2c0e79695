"""The README keeps its promises: two commands first, a short page, and generated blocks
(the results table, the recipe reference) equal to what their sources render."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _updater():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_starts_with_the_two_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert README.index("```bash") < README.index("\n## ")  # before any section


def test_readme_is_a_front_page_not_a_lab_notebook():
    """What it is, the commands, one results table and where to go next; the measurement
    history lives in docs/. The generated recipe reference does not count."""
    updater = _updater()
    start, end = updater.BLOCKS["reference"]
    prose = README.split(start, 1)[0] + README.split(end, 1)[1]
    assert len(prose.splitlines()) <= 200
    assert README.index("## Results") < README.index("## The demo")
    for doc in ("docs/ablate.md", "docs/benchmarks.md", "docs/resilience.md", "docs/architecture.md"):
        assert doc in README and (ROOT / doc).is_file()


def test_results_table_is_generated_from_the_latest_bench_results():
    updater = _updater()
    assert updater.block(README, "results") == updater.render_results()


def test_llm_demo_figures_are_generated_from_the_saved_run():
    updater = _updater()
    assert updater.block(README, "llm-demo") == updater.render_llm_demo()
    assert "| exact_match |" in updater.render_llm_demo()


def test_recipe_reference_in_readme_is_generated_from_the_schema():
    updater = _updater()
    assert updater.block(README, "reference") == updater.render("reference")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
