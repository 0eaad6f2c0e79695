"""Rewrite README.md's recipe reference from the schema (tests/test_readme.py checks it).

Run after changing a recipe key: `.venv/bin/python scripts/update_readme_reference.py`.
"""
from pathlib import Path

from leantrain.recipe import reference_markdown

START, END = "<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"
readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text(encoding="utf-8")
head, rest = text.split(START, 1)
tail = rest.split(END, 1)[1]
readme.write_text(head + START + reference_markdown() + END + tail, encoding="utf-8")
print(f"updated the recipe reference in {readme}")
