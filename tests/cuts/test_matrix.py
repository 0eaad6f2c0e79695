"""Every registered cut: documented, described, and able to train the tiny recipe; all together too.

The parametrisation reads ``leantrain.cuts.REGISTRY``, so a newly added cut is covered
without touching this file (it needs only a method card in docs/cuts/).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from cuts_helpers import REPO, initial_prepared, same_data, stored_snapshot
from leantrain import train
from leantrain.cuts import REGISTRY, CutConfig
from leantrain.recipe import Recipe

CUTS = sorted(REGISTRY)
# Cuts that are on unless a recipe turns them off; a run that tests other cuts names them off.
DEFAULTS_OFF = {name: False for name, cls in REGISTRY.items() if cls.default_on}
CARDS = REPO / "docs" / "cuts"
MEASURED_LINE = "(measured by `leantrain ablate` on the demo: see docs/ablate.md)"  # bench/cut_cards.py writes it

# Recipe value that enables a cut alone; ``True`` (its defaults) unless listed here.
ALONE = {"precision": "bf16", "frozen_prefix": 1}  # the tiny models have 2 blocks
# Non-default settings for the run with every cut at once: make each one do the most.
TOGETHER = {"precision": {"dtype": "bf16", "frozen_dtype": "bf16"}, "grad_accumulation": 2, "frozen_prefix": 1}


@pytest.fixture
def file_settings(tiny_base_dir, tiny_teacher_run) -> dict[str, dict]:
    """Settings naming files that fixtures create: merged into ALONE and TOGETHER.

    warm_start copies the tiny base's own embeddings (another model's matrix, same
    vocabulary: row-for-row). Unrelated vectors would overwrite what the pretrained base
    learned, which a 24-step fine-tune does not recover (see test_cut_warm_start.py for
    the cut's benefit, on a model trained from scratch).

    distill learns from a fine-tuned tiny run; the student starts from the base (not a
    copy of the teacher, which would leave the run nothing to learn).
    """
    return {"warm_start": {"source": f"model:{tiny_base_dir}"},
            "distill": {"teacher": str(tiny_teacher_run), "init_from_teacher": False}}


def test_registry_is_not_empty_and_names_match():
    assert {"lora", "gradient_checkpointing", "precision", "grad_accumulation", "early_stopping"} <= set(CUTS)
    for name, cls in REGISTRY.items():
        assert cls.name == name


@pytest.mark.parametrize("name", CUTS)
def test_cut_has_card_summary_and_described_config(name):
    cls = REGISTRY[name]
    assert cls.summary.strip(), f"{name}: empty summary"
    assert issubclass(cls.Config, CutConfig)
    for field_name, field in cls.Config.model_fields.items():
        assert field.description and field.description.strip(), f"cuts.{name}.{field_name} has no description"

    card = CARDS / f"{name}.md"
    assert card.is_file(), f"missing method card {card.relative_to(REPO)}"
    text = card.read_text(encoding="utf-8")
    assert text.startswith("# ")
    for section in ("## What it does", "## When to use it", "## Recipe keys", "## Composes with", "## Caveats"):
        assert section in text, f"{card.name}: no '{section}' section"
    # Every recipe key of the cut is documented in its card.
    for field_name in cls.Config.model_fields:
        assert f"`{field_name}`" in text, f"{card.name} does not mention `{field_name}`"
    measured = text.split("## Measured on the demo", 1)
    assert len(measured) == 2, f"{card.name}: no '## Measured on the demo' section"
    assert MEASURED_LINE in measured[1].splitlines()


@pytest.mark.parametrize("name", CUTS)
def test_cut_is_a_recipe_section(name):
    """Naming a cut turns on that cut and nothing else beyond the cuts that are on by default."""
    default_on = {n for n, cls in REGISTRY.items() if cls.default_on}
    assert set(Recipe.model_validate({}).enabled_cuts()) == default_on
    recipe = Recipe.model_validate({"cuts": {name: True}})
    assert set(recipe.enabled_cuts()) == default_on | {name}
    off = Recipe.model_validate({"cuts": {name: False}})
    assert set(off.enabled_cuts()) == default_on - {name}


def check_run(recipe: dict) -> tuple[dict, torch.nn.Module]:
    """Train ``recipe``; check it learned, moved its trainable weights and kept its frozen ones."""
    initial, untrained = initial_prepared(recipe)
    before = stored_snapshot(initial)
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}

    result = train(copy.deepcopy(recipe), show_progress=False)
    summary, model = result.summary, result.model
    assert summary["status"] in ("completed", "early_stopped"), summary["stop_reason"]
    assert summary["eval"]["loss"] < untrained["loss"] - 0.05, (summary["eval"], untrained)

    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    dtypes = {n: p.dtype for n, p in initial.named_parameters()}
    for name, param in after.items():
        assert param.requires_grad == (name in trainable), name
        assert param.dtype == dtypes[name], name
        if name in trainable:
            assert not same_data(param, before[name]), f"trainable {name} did not change"
        else:
            assert same_data(param, before[name]), f"frozen {name} changed"
    assert trainable
    return summary, model


@pytest.mark.parametrize("name", CUTS)
def test_each_cut_trains_the_tiny_recipe(name, cut_recipe, file_settings):
    recipe = copy.deepcopy(cut_recipe)
    needed = REGISTRY[name].requires  # e.g. quantized_base needs lora: they run as a pair
    recipe["cuts"] = {**DEFAULTS_OFF, **{other: True for other in needed}, name: {**ALONE, **file_settings}.get(name, True)}
    summary, model = check_run(recipe)
    assert summary["cuts"] == sorted([name, *needed], key=lambda n: REGISTRY[n].order)
    if name == "lora":
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert len(frozen) > len(list(model.parameters())) / 2  # the base is frozen


def _conflict(a: str, b: str) -> bool:
    return b in REGISTRY[a].conflicts or a in REGISTRY[b].conflicts


def compatible_cuts(first: str | None) -> list[str]:
    """``first`` plus every cut, in name order, that conflicts with none already taken."""
    taken = [first] if first else []
    for name in CUTS:
        if name not in taken and not any(_conflict(name, other) for other in taken):
            taken.append(name)
    return sorted(taken)


# One run with (nearly) every cut, plus one led by each cut that some cut cannot run with,
# so every cut is part of some all-together run.
LEADS = [None] + sorted({n for n in CUTS if n not in compatible_cuts(None)})


@pytest.mark.parametrize("lead", LEADS)
def test_all_cuts_together(lead, cut_recipe, file_settings):
    names = compatible_cuts(lead)
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {**DEFAULTS_OFF, **{name: {**TOGETHER, **file_settings}.get(name, True) for name in names}}
    summary, model = check_run(recipe)

    assert sorted(summary["cuts"]) == names
    assert summary["cuts"] == sorted(names, key=lambda n: REGISTRY[n].order)
    params = dict(model.named_parameters())
    # LoRA + frozen_dtype: bf16 frozen base, fp32 adapters and head.
    assert {p.dtype for p in params.values() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in params.values() if p.requires_grad} == {torch.float32}
    assert all("lora_" in n or "modules_to_save" in n for n, p in params.items() if p.requires_grad)
    # Checkpointing went through the wrapped model's transformers switch.
    assert summary["extras"]["checkpointed_blocks"] == "transformers"
    # Accumulation of 2: 12 micro-batches per epoch make 6 optimizer steps.
    assert summary["steps"] == 2 * 6
    # Early stopping evaluated at each epoch's end (steps 6 and 12) and ended on the better weights.
    run_dir = Path(recipe["output"]["dir"])
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {e["step"]: e["loss"] for e in evals if e["event"] == "eval"}
    assert sorted(losses) == [6, 12]
    best_step = min(losses, key=losses.get)
    assert summary["extras"].get("restored_best_step", 12) == best_step
    assert summary["eval"]["loss"] == pytest.approx(losses[best_step], abs=1e-6)
