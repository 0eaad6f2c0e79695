"""What `leantrain tune` searches: the recipe's cost-relevant choices, as `--set` overrides.

Why overrides: a trial is then an ordinary `leantrain train RECIPE --set ...` run (the
normal engine: checkpoints, ledger, early stop), and the winning recipe is the user's
own file with those values applied, nothing else changed.

The choices, each only where it applies to the recipe:
  - LoRA rank and which projections get adapters (a LoRA recipe only);
  - frozen-prefix depth: 0 (off) up to two blocks below the top (a transformers encoder
    with LoRA: the prefix is cached, the cheapest cut when it holds the accuracy);
  - learning rate (log scale around the recipe's), batch size, and the epoch budget.
Precision and the data are the recipe's: they are chosen by the device, not by search.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from leantrain.recipe import Recipe

# Adapter targets per architecture family: the recipe's (or PEFT's default), or "wide",
# every projection of the attention and the feed-forward.
WIDE_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
FAMILY = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "electra": "bert", "llama": "llama",
          "mistral": "llama", "qwen2": "llama"}


@dataclass(frozen=True)
class SearchSpace:
    """The ranges one recipe's trials draw from (fixed per study, so a resumed search
    draws from the same space)."""

    lora: bool
    ranks: tuple[int, ...]
    wide_targets: tuple[str, ...] | None
    prefix_depths: tuple[int, ...]
    lr_range: tuple[float, float]
    batch_sizes: tuple[int, ...]
    max_epochs: int

    def describe(self) -> dict:
        return json.loads(json.dumps(self.__dict__))


def _model_layout(recipe: Recipe) -> tuple[str | None, int | None]:
    """The model's family and its number of blocks, from its config.json (no weights)."""
    try:
        from transformers import AutoConfig

        from leantrain.models.loading import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(recipe.model.name_or_path))
    except (OSError, ValueError, ImportError):
        return None, None
    return FAMILY.get(getattr(config, "model_type", "")), getattr(config, "num_hidden_layers", None)


def space_for(recipe: Recipe, max_epochs: int | None = None) -> SearchSpace:
    family, layers = _model_layout(recipe)
    lora = recipe.cuts.lora.enabled
    lr = recipe.train.lr
    depths: tuple[int, ...] = (0,)
    if lora and family == "bert" and layers and layers > 2 and recipe.model.task == "sequence-classification":
        depths = tuple(sorted({0, layers // 3, layers // 2, 2 * layers // 3}))
    batch = recipe.train.batch_size
    return SearchSpace(
        lora=lora, ranks=(4, 8, 16) if lora else (),
        wide_targets=tuple(WIDE_TARGETS[family]) if lora and family in WIDE_TARGETS else None,
        prefix_depths=depths, lr_range=(lr / 4, lr * 4),
        batch_sizes=tuple(sorted({max(1, batch // 2), batch})),
        max_epochs=max_epochs or max(1, math.ceil(recipe.train.epochs)) + 2,
    )


def suggest(trial, space: SearchSpace) -> list[str]:
    """One trial's overrides, drawn through Optuna's ``trial.suggest_*`` (so the sampler
    learns from them and a resumed study knows them)."""
    sets = [f"train.lr={trial.suggest_float('lr', *space.lr_range, log=True):.3g}",
            f"train.batch_size={trial.suggest_categorical('batch_size', list(space.batch_sizes))}",
            f"train.epochs={trial.suggest_int('epochs', 1, space.max_epochs)}"]
    if space.lora:
        sets.append(f"cuts.lora.r={trial.suggest_categorical('lora_r', list(space.ranks))}")
        if space.wide_targets and trial.suggest_categorical("lora_targets", ["recipe", "wide"]) == "wide":
            sets.append(f"cuts.lora.target_modules={json.dumps(list(space.wide_targets))}")
    if len(space.prefix_depths) > 1:
        depth = trial.suggest_categorical("frozen_prefix", list(space.prefix_depths))
        sets.append(f"cuts.frozen_prefix.blocks={depth}" if depth else "cuts.frozen_prefix=false")
        if depth:
            sets.append("cuts.frozen_prefix.enabled=true")
    return sets
