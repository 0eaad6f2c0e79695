"""LoRA through PEFT: train small low-rank adapters instead of every weight.

Why: optimizer states and gradients exist only for the adapters (well under 1% of a
BERT-style model), so memory for them all but vanishes and the saved artefact is a few
hundred KB instead of the whole model. The classifier head stays fully trainable.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

# PEFT still calls transformers' old name; the notice says nothing a leantrain user can act on.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class LoraSettings(CutConfig):
    r: int = Field(8, ge=1, description="Rank of the adapter matrices.")
    alpha: float = Field(16, gt=0, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt. Default: PEFT's per-architecture choice (query/value for BERT, q_proj/v_proj for Llama)."
    )
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter. Default: the task head (classifier/score)."
    )
    layers: list[int] | None = Field(
        None, description="Indices of the transformer blocks that get adapters. Default: every block. With `frozen_prefix`, the blocks above the prefix."
    )
    merge_on_save: bool = Field(False, description="Also export a merged model (adapter folded into the base) to `model/merged`.")


def _keep_real_saved_modules(peft_model, model: torch.nn.Module) -> None:
    """PEFT appends its task type's default heads (``classifier``, ``score``) to
    ``modules_to_save`` on top of the recipe's, so the saved adapter_config.json listed
    ``classifier`` twice and a ``score`` the model does not have. Keep each name once,
    and only names that match a module of this model, so the file says what was trained."""
    config = peft_model.peft_config[peft_model.active_adapter]
    if not config.modules_to_save:
        return
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} | {name for name, _ in model.named_modules()}
    config.modules_to_save = [n for i, n in enumerate(config.modules_to_save)
                              if n in leaves and n not in config.modules_to_save[:i]]


@register
class Lora(Cut):
    name = "lora"
    Config = LoraSettings
    summary = "Low-rank adapters via PEFT; only the adapters and the task head train."
    order = 10

    def prepare_model(self, model: torch.nn.Module, run) -> torch.nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = self.config
        hf_type = getattr(getattr(model, "config", None), "model_type", None)
        if cfg.target_modules is None and hf_type is None:
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise UserError(
                "cuts.lora.target_modules: required for a model that is not a Hugging Face transformer; "
                f"its Linear layers are named: {', '.join(linears) or '(none)'}"
            )
        task_type = None
        if hf_type is not None:
            task_type = TaskType.SEQ_CLS if hasattr(model, "num_labels") and "ForSequenceClassification" in type(model).__name__ else TaskType.CAUSAL_LM
        peft_config = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            modules_to_save=cfg.modules_to_save,
            layers_to_transform=cfg.layers,
            task_type=task_type,
        )
        try:
            peft_model = get_peft_model(model, peft_config)
        except ValueError as exc:
            raise UserError(f"cuts.lora: {str(exc).splitlines()[0]}") from None
        _keep_real_saved_modules(peft_model, model)
        return peft_model

    def on_save(self, model: torch.nn.Module, out_dir: Path, run) -> dict[str, str]:
        if not self.config.merge_on_save:
            return {}
        from leantrain.models.low_bit import dequantized_copy

        merged = dequantized_copy(model).merge_and_unload()  # a quantized base merges as its float values
        target = Path(out_dir) / "merged"
        merged.save_pretrained(target)
        return {"merged_model": str(target)}
