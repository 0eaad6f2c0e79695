"""Each method card states the defaults the recipe schema really has.

A default that changes in code but not in its card misleads the user who reads the card
to decide what to turn on; these tests fail when the two drift apart.
"""
from __future__ import annotations

import re

import pytest

from cuts_helpers import REPO
from leantrain.cuts import REGISTRY
from leantrain.recipe import Recipe

CARDS = REPO / "docs" / "cuts"
# Defaults changed by issue 16: their cards must state them, not only may.
MUST_STATE = {("precision", "cpu_matmul_attention")}
STATED = re.compile(r"\(default:? `?([^`),;:]+)`?")


def _spelled(value) -> set[str]:
    """The ways a card may write ``value``."""
    if isinstance(value, bool):
        return {"true", "on"} if value else {"false", "off"}
    if isinstance(value, (int, float)):
        return {f"{value:g}", str(value)}
    return {str(value)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_card_states_whether_the_cut_is_on_by_default(name):
    text = (CARDS / f"{name}.md").read_text(encoding="utf-8")
    stated = re.findall(r"\*\*Default: (on|off)\.\*\*", text)
    assert len(stated) == 1, f"docs/cuts/{name}.md: expected one '**Default: on.**' or '**Default: off.**' line"
    assert (stated[0] == "on") == REGISTRY[name].default_on
    # ...and the schema agrees with the class attribute the card is checked against.
    assert getattr(Recipe.model_validate({}).cuts, name).enabled == REGISTRY[name].default_on


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_default_a_card_states_is_the_schema_default(name):
    text = (CARDS / f"{name}.md").read_text(encoding="utf-8")
    for field, info in REGISTRY[name].Config.model_fields.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{field}` |")]
        assert rows, f"docs/cuts/{name}.md has no table row for `{field}`"
        found = STATED.search(rows[0])
        if (name, field) in MUST_STATE:
            assert found, f"docs/cuts/{name}.md: the `{field}` row must state its default"
        if found:
            assert found.group(1).strip() in _spelled(info.default), (
                f"docs/cuts/{name}.md says `{field}` defaults to {found.group(1)!r}; the schema says {info.default!r}"
            )
