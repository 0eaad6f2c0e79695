"""The ladder computed from a recipe: which rungs, in which order, with which overrides."""
from __future__ import annotations

import pytest

from leantrain.ablate import parse_target, plan_ladder
from leantrain.errors import UserError
from leantrain.recipe import Recipe, apply_overrides


def recipe(**cuts) -> Recipe:
    return Recipe.model_validate({"cuts": cuts, "train": {"batch_size": 8, "lr": 2e-3}})


def effective(overrides: list[str]) -> Recipe:
    """The recipe a rung trains: the overrides applied the way `train --set` applies them."""
    return Recipe.model_validate(apply_overrides({"cuts": {"lora": True, "precision": "bf16", "grad_accumulation": 2},
                                                  "train": {"batch_size": 8, "lr": 2e-3}}, overrides))


def test_default_ladder_layers_recipe_cuts_then_suggestions_and_each_alone():
    rungs = plan_ladder(recipe(lora=True, precision="bf16"))
    # fast_dropout is on by default, so it is one of the recipe's cuts the ladder measures.
    assert [r.kind for r in rungs] == ["baseline"] + ["cumulative"] * 5 + ["alone"] * 4
    assert [r.cuts for r in rungs[1:6]] == [["lora"], ["lora", "precision"],
                                             ["lora", "precision", "gradient_checkpointing"],
                                             ["lora", "precision", "gradient_checkpointing", "bucketing"],
                                             ["lora", "precision", "gradient_checkpointing", "bucketing", "fast_dropout"]]
    assert [r.cuts for r in rungs[6:]] == [["precision"], ["gradient_checkpointing"], ["bucketing"], ["fast_dropout"]]
    assert rungs[3].name == "LoRA + bf16 + checkpointing"
    assert len({r.slug for r in rungs}) == len(rungs)


def test_rung_overrides_turn_exactly_their_cuts_on():
    rungs = plan_ladder(Recipe.model_validate({"cuts": {"lora": True, "precision": "bf16", "grad_accumulation": 2},
                                               "train": {"batch_size": 8, "lr": 2e-3}}), alone=False, from_scratch=True)
    baseline = effective(rungs[0].overrides)
    assert baseline.enabled_cuts() == {}
    assert not baseline.train.bucket_by_length
    assert baseline.train.lr == 5e-5          # full fine-tuning at a full-fine-tune learning rate
    assert baseline.train.batch_size == 16    # accumulation off keeps the effective batch
    assert effective(rungs[1].overrides).model.from_scratch
    for rung in rungs[2:]:
        run = effective(rung.overrides)
        assert set(run.enabled_cuts()) == set(rung.cuts) - {"bucketing"}
        assert run.train.bucket_by_length == ("bucketing" in rung.cuts)
    everything = effective(rungs[-1].overrides)
    assert everything.train.batch_size == 8 and everything.train.lr == 2e-3


def test_cuts_option_sets_order_and_values():
    rungs = plan_ladder(recipe(), cuts=["precision=fp16", "lora"], alone=False)
    # A default-on cut left out of --cuts stays on in every rung, and the baseline says so.
    assert [r.name for r in rungs] == ["baseline (full fine-tune, fp32, recipe's fast_dropout kept)", "fp16", "fp16 + LoRA"]
    assert "cuts.precision=fp16" in rungs[1].overrides and "cuts.lora=false" in rungs[1].overrides


@pytest.mark.parametrize("cuts", [["nope"], ["lora", "lora"]])
def test_bad_cut_lists_are_one_line_errors(cuts):
    with pytest.raises(UserError, match="ablate --cuts"):
        plan_ladder(recipe(), cuts=cuts)


def test_parse_target():
    assert parse_target("accuracy=0.8") == ("accuracy", 0.8)
    for bad in ("accuracy", "=0.8", "accuracy=high"):
        with pytest.raises(UserError, match="METRIC=VALUE"):
            parse_target(bad)


def test_packing_is_a_rung_turned_on_and_off_by_data_pack():
    packed = Recipe.model_validate({"model": {"task": "causal-lm"}, "data": {"pack": True},
                                    "cuts": {"lora": True, "precision": "bf16"}, "train": {"batch_size": 8}})
    rungs = plan_ladder(packed, alone=False)
    # The LLM ladder: full fp32 -> LoRA -> + bf16 -> + packing -> + checkpointing -> ...
    assert [r.cuts[-1] for r in rungs[1:4]] == ["lora", "precision", "packing"]
    assert rungs[3].name.endswith("+ packing")
    for rung in rungs:
        assert apply_overrides(packed.model_dump(mode="json"), rung.overrides)["data"]["pack"] == ("packing" in rung.cuts)
    asked = plan_ladder(recipe(lora=True), cuts=["lora", "packing"], alone=False)
    assert "data.pack=true" in asked[2].overrides and "data.pack=false" in asked[1].overrides
