"""Which configurations an ablation runs: the ladder, computed from a recipe alone.

Why a ladder and not every combination: 2^n runs are unaffordable, and users adopt cuts
one at a time. So the ladder is: a baseline (full fine-tune, fp32, none of the cuts),
the cuts added one at a time in a fixed order (memory cuts that change the arithmetic
least come first), and each cut alone, which tells how much of a cumulative rung's
saving belongs to the cut just added. Every rung is a list of ``--set`` overrides on
the user's own recipe, so a rung is reproducible with ``leantrain train``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from leantrain.cuts import REGISTRY
from leantrain.errors import UserError
from leantrain.recipe import Recipe

# Length bucketing and sequence packing are recipe settings, not registered cuts, but they
# are cost cuts all the same: each is turned on and off by one recipe key.
BUCKETING = "bucketing"
PACKING = "packing"
SETTING_CUTS = {BUCKETING: "train.bucket_by_length", PACKING: "data.pack"}
# The order cuts are layered in: what changes the model first, then memory, then speed,
# then what changes the number of steps. Cuts not listed follow in registry order.
PREFERRED_ORDER = ("warm_start", "lora", "precision", PACKING, "gradient_checkpointing", BUCKETING,
                   "curriculum", "grad_accumulation", "early_stopping")
# Added to the ladder when the recipe lacks them: they save memory without changing the
# maths, so they are worth measuring on any model.
SUGGESTED = ("gradient_checkpointing",)
LABELS = {"lora": "LoRA", "gradient_checkpointing": "checkpointing", BUCKETING: "length bucketing",
          "early_stopping": "early stopping", "warm_start": "warm start"}
# Full fine-tuning with a LoRA learning rate (1e-3 and up) wrecks a pretrained model.
DEFAULT_FULL_LR = 5e-5


@dataclass(frozen=True)
class LadderCut:
    """One cut of the ladder and the overrides that turn it on and off in a rung."""
    name: str
    label: str
    on: tuple[str, ...]
    off: tuple[str, ...]


@dataclass
class Rung:
    name: str
    slug: str
    kind: str                      # baseline | cumulative | alone | from_scratch
    cuts: list[str]
    overrides: list[str] = field(default_factory=list)


def _setting_on(recipe: Recipe, key: str) -> bool:
    section, name = key.split(".")
    return bool(getattr(getattr(recipe, section), name))


def _label(name: str, recipe: Recipe, value: str | None) -> str:
    if name == "precision":
        cfg = recipe.cuts.precision if recipe.cuts.precision.enabled else None
        dtype = value if value and value != "true" else (cfg.dtype if cfg else "bf16")
        frozen = f", frozen base {cfg.frozen_dtype}" if cfg is not None and cfg.frozen_dtype else ""
        return f"{dtype}{frozen}"
    if name == "grad_accumulation":
        steps = recipe.cuts.grad_accumulation.steps if recipe.cuts.grad_accumulation.enabled else (value or "2")
        return f"accumulation x{steps}"
    return LABELS.get(name, name.replace("_", " "))


def _ladder_cut(name: str, value: str | None, recipe: Recipe, full_lr: float) -> LadderCut:
    """How to turn ``name`` on and off on top of ``recipe``."""
    label = _label(name, recipe, value)
    if name in SETTING_CUTS:
        key = SETTING_CUTS[name]
        in_recipe = _setting_on(recipe, key) and value is None
        return LadderCut(name, label, () if in_recipe else (f"{key}=true",), (f"{key}=false",))
    if name not in REGISTRY:
        raise UserError(f"ablate --cuts: unknown cut {name!r}; known: {', '.join(sorted(REGISTRY) + list(SETTING_CUTS))}")
    in_recipe = getattr(recipe.cuts, name).enabled and value is None
    on: tuple[str, ...] = () if in_recipe else (f"cuts.{name}={value or 'true'}",)
    off: tuple[str, ...] = (f"cuts.{name}=false",)
    batch = recipe.train.batch_size
    if name == "grad_accumulation":
        # Keep the effective batch: without accumulation a rung takes the whole batch at once.
        if in_recipe:
            off += (f"train.batch_size={batch * recipe.cuts.grad_accumulation.steps}",)
        else:
            on += (f"train.batch_size={max(1, batch // int(value or 2))}",)
    if name == "lora" and recipe.cuts.lora.enabled:
        off += (f"train.lr={full_lr}",)
    return LadderCut(name, label, on, off)


def _requested(spec: list[str] | None, recipe: Recipe) -> list[tuple[str, str | None]]:
    """(name, value) pairs: the ``--cuts`` list as given, else the recipe's cuts plus suggestions."""
    if spec:
        pairs = []
        for item in spec:
            name, _, value = item.partition("=")
            pairs.append((name.strip(), value.strip() or None))
        return pairs
    names = list(recipe.enabled_cuts())
    names += [n for n in SUGGESTED if n in REGISTRY and n not in names]
    names += [name for name, key in SETTING_CUTS.items() if _setting_on(recipe, key)]
    rank = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    names.sort(key=lambda n: (rank.get(n, len(rank)), REGISTRY[n].order if n in REGISTRY else 0))
    return [(n, None) for n in names]


def _slug(index: int, cuts: list[LadderCut], prefix: str = "") -> str:
    body = "+".join(c.name for c in cuts) or "baseline"
    return f"{index:02d}-{prefix}{body}"


def plan_ladder(recipe: Recipe, cuts: list[str] | None = None, alone: bool = True,
                from_scratch: bool = False, full_lr: float = DEFAULT_FULL_LR) -> list[Rung]:
    """The rungs to run, in order. ``cuts``: ``NAME`` or ``NAME=VALUE`` items (a recipe
    value, e.g. ``precision=fp16``), in the order to layer them; default: the recipe's
    cuts plus gradient checkpointing and length bucketing, in ``PREFERRED_ORDER``."""
    ladder = [_ladder_cut(name, value, recipe, full_lr) for name, value in _requested(cuts, recipe)]
    if len({c.name for c in ladder}) != len(ladder):
        raise UserError("ablate --cuts: a cut is listed twice")

    def overrides(enabled: list[LadderCut]) -> list[str]:
        sets: list[str] = []
        for c in ladder:
            sets += c.on if c in enabled else c.off
        return sets

    # Recipe cuts left out of the ladder stay on in every rung, the baseline included.
    kept = [n for n in recipe.enabled_cuts() if n not in {c.name for c in ladder}]
    base = "no cuts" if not kept else f"recipe's {', '.join(kept)} kept"
    full = "full fine-tune, " if "lora" not in kept else ""
    fp32 = "fp32, " if "precision" not in kept else ""
    rungs = [Rung(f"baseline ({full}{fp32}{base})", _slug(1, []), "baseline", [], overrides([]))]
    if from_scratch:
        rungs.append(Rung(f"from scratch (random init, {base})", f"{len(rungs) + 1:02d}-from_scratch", "from_scratch",
                          [], overrides([]) + ["model.from_scratch=true"]))
    for i in range(1, len(ladder) + 1):
        enabled = ladder[:i]
        rungs.append(Rung(" + ".join(c.label for c in enabled), _slug(len(rungs) + 1, enabled), "cumulative",
                          [c.name for c in enabled], overrides(enabled)))
    if alone:
        for c in ladder[1:]:  # the first cut alone is already the first cumulative rung
            rungs.append(Rung(f"{c.label} only", _slug(len(rungs) + 1, [c], "only-"), "alone", [c.name], overrides([c])))
    return rungs


def describe_ladder(rungs: list[Rung]) -> str:
    return "\n".join(f"  {r.slug}: {r.name}  [{' '.join(r.overrides) or 'recipe as is'}]" for r in rungs)


def parse_target(text: str, option: str = "ablate --to-metric") -> tuple[str, float]:
    """``accuracy=0.8`` -> ("accuracy", 0.8), with a one-line error otherwise."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(yaml.safe_load(value))
    except (ValueError, TypeError, yaml.YAMLError):
        raise UserError(f"{option}: expected METRIC=VALUE such as accuracy=0.8, got {text!r}") from None
