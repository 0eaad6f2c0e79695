"""The README keeps its promises: two commands first, and a recipe reference equal to the schema's."""
from __future__ import annotations

from pathlib import Path

from leantrain.recipe import reference_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert README.index("```bash") < README.index("\n## ")  # before any section


def test_recipe_reference_in_readme_is_generated_from_the_schema():
    inside = README.split("<!-- recipe-reference:start -->\n", 1)[1].split("<!-- recipe-reference:end -->", 1)[0]
    assert inside == reference_markdown()


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
