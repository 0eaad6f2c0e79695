"""Build a recipe's model without its weights: a config, the meta device, the recipe's cuts.

Why: planning must not download or allocate gigabytes. ``from_config`` under
``torch.device("meta")`` creates every parameter with its shape and dtype but no
storage, in the dtype ``from_pretrained`` would load (transformers reads the config's
dtype in both). The cuts that change memory or FLOPs (LoRA, gradient checkpointing,
precision casts) are applied by the very cut classes a run uses, so the planner cannot
drift from what training does. For deep models a copy with one and two blocks is built
instead: every per-block figure is then extrapolated linearly to the full depth.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from leantrain.errors import UserError

# Cuts whose effect on a step's memory and FLOPs the planner models. Others are listed in
# the plan's notes: some only change how many steps run (early stopping, curriculum),
# others would need their own modelling here.
# fsdp is modeled per device by distributed_cost (with `plan --nproc/--nodes`).
MODELED_CUTS = ("lora", "gradient_checkpointing", "precision", "grad_accumulation", "fsdp", "quantized_base")


@dataclass(frozen=True)
class Setup:
    """One way to run a step: which cuts, at which micro-batch and accumulation."""

    lora: object | None            # the recipe's LoraSettings, or None for full fine-tuning
    checkpointing: object | None   # CheckpointingSettings, or None
    dtype: str | None              # autocast dtype (fp32/bf16/fp16); None: no precision cut
    frozen_dtype: str | None
    micro_batch: int
    accumulation: int = 1
    quantized_base: object | None = None  # QuantizedBaseSettings: the frozen base in int8/NF4
    # Matmul attention, as a bf16 run on a CPU uses it; a GPU keeps the fused kernel, so a
    # recipe billed as a GPU is traced with that.
    cpu_matmul_attention: bool = False

    @classmethod
    def from_recipe(cls, recipe) -> "Setup":
        cuts = recipe.enabled_cuts()
        precision = cuts.get("precision")
        accumulation = cuts.get("grad_accumulation")
        lora = cuts.get("lora")
        if lora is not None and lora.layers is not None:
            # Planned with adapters on every block: the planner measures a reduced-depth
            # model and scales per block, so it cannot place adapters on chosen blocks.
            # An upper bound for adapter memory and FLOPs; planner.py says so in its notes.
            lora = lora.model_copy(update={"layers": None})
        return cls(
            lora=lora, checkpointing=cuts.get("gradient_checkpointing"),
            dtype=precision.dtype if precision else None, frozen_dtype=precision.frozen_dtype if precision else None,
            micro_batch=recipe.train.batch_size, accumulation=accumulation.steps if accumulation else 1,
            quantized_base=cuts.get("quantized_base") if cuts.get("lora") else None,
            cpu_matmul_attention=bool(precision and precision.cpu_matmul_attention and precision.dtype == "bf16"
                                      and recipe.hardware.name.lower().startswith("cpu")),
        )

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accumulation

    @property
    def compute_dtype(self) -> str:
        return self.dtype or "fp32"

    def with_batch(self, micro_batch: int, accumulation: int) -> "Setup":
        return replace(self, micro_batch=micro_batch, accumulation=accumulation)

    def cuts_label(self) -> str:
        parts = ["lora" if self.lora else "full"]
        if self.checkpointing:
            parts.append("checkpointing")
        parts.append(self.compute_dtype + (f" (frozen {self.frozen_dtype})" if self.frozen_dtype else ""))
        if self.quantized_base is not None:
            parts.append("int8 base" if self.quantized_base.bits == 8 else "NF4 base")
        return " + ".join(parts)

    def key(self) -> tuple:
        bits = self.quantized_base.bits if self.quantized_base is not None else None
        return (bool(self.lora), bool(self.checkpointing), self.dtype, self.frozen_dtype, bits)


def model_config(model_section, num_labels: int):
    """The model's config alone: from a local folder, a bundled model, or a cached hub id."""
    from transformers import AutoConfig

    from leantrain.models import resolve_model_path
    from leantrain.models.loading import _quiet_transformers

    _quiet_transformers()
    path = resolve_model_path(model_section.name_or_path)
    kwargs = {"num_labels": num_labels} if model_section.task == "sequence-classification" else {}
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model_section.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot read a config.json for {path!r} (planning needs only the config; "
                        f"give a local folder holding config.json if the hub is unreachable): {str(exc).splitlines()[0]}") from None


def layer_count(config) -> int | None:
    value = getattr(config, "num_hidden_layers", None)
    return int(value) if isinstance(value, int) else None


def with_layers(config, layers: int):
    """A copy of ``config`` with ``layers`` blocks (per-layer lists cut to match)."""
    reduced = copy.deepcopy(config)
    reduced.num_hidden_layers = layers
    for name in ("layer_types", "block_types"):
        value = getattr(reduced, name, None)
        if isinstance(value, list) and len(value) > layers:
            setattr(reduced, name, value[:layers])
    return reduced


def build_meta_model(config, task: str, setup: Setup) -> torch.nn.Module:
    """The model on the meta device with ``setup``'s cuts applied, in training mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from leantrain.cuts.gradient_checkpointing import GradientCheckpointing
    from leantrain.cuts.lora import Lora
    from leantrain.cuts.precision import Precision, PrecisionSettings
    from leantrain.engine.context import RunContext

    auto = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM
    run = RunContext(device=torch.device("cpu"), train=None)
    with torch.device("meta"):
        try:
            model = auto.from_config(copy.deepcopy(config))
        except (ValueError, TypeError) as exc:
            raise UserError(f"model.name_or_path: cannot build this model from its config: {str(exc).splitlines()[0]}") from None
        if setup.lora is not None:
            model = Lora(setup.lora).prepare_model(model, run)  # new adapter weights land on meta too
    if setup.checkpointing is not None:
        model = GradientCheckpointing(setup.checkpointing).prepare_model(model, run)
    if setup.dtype is not None:
        settings = PrecisionSettings(enabled=True, dtype=setup.dtype, frozen_dtype=setup.frozen_dtype,
                                     cpu_matmul_attention=setup.cpu_matmul_attention)
        model = Precision(settings).prepare_model(model, run)
    if setup.quantized_base is not None:
        from leantrain.cuts.quantized_base import plan_on_meta

        model.planned_weight_bytes = plan_on_meta(model, setup.quantized_base)
    model.train()
    return model


def parameter_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts and bytes (tied weights counted once), buffers included in weights."""
    params = {id(p): p for p in model.parameters()}.values()
    buffers = {id(b): b for b in model.buffers()}.values()
    trainable = [p for p in params if p.requires_grad]
    planned = getattr(model, "planned_weight_bytes", {})  # low-bit weights (cuts.quantized_base)
    return {
        "total_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in trainable),
        "weights": sum(planned.get(id(t), t.numel() * t.element_size()) for t in list(params) + list(buffers)),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
    }
