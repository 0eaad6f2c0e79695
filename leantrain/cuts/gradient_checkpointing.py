"""Gradient checkpointing: keep only block inputs for backward, recompute the rest.

Why: activations saved for backward dominate memory at long sequences and large
batches. Recomputing each transformer block's forward during backward trades roughly
one extra forward pass (~30% more compute) for several times fewer saved bytes.
Hugging Face models use their own switch; any other module has the blocks of its
largest ``ModuleList`` (or those named in ``modules``) wrapped with
``torch.utils.checkpoint``.
"""
from __future__ import annotations

import functools

import torch
from pydantic import Field
from torch.utils.checkpoint import checkpoint

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError


class CheckpointingSettings(CutConfig):
    modules: list[str] | None = Field(
        None, description="For non-Hugging-Face models: dotted names of the ModuleLists whose blocks to checkpoint. Default: the largest ModuleList."
    )


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # use_reentrant=False: works with frozen inputs (LoRA) and keyword arguments.
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(model: torch.nn.Module, module_names: list[str] | None = None) -> int:
    """Wrap each block of the chosen ModuleLists in activation checkpointing; returns how many."""
    if module_names:
        lists = []
        for name in module_names:
            try:
                lists.append(model.get_submodule(name))
            except AttributeError:
                raise UserError(f"cuts.gradient_checkpointing.modules: no submodule named {name!r}") from None
    else:
        candidates = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
        if not candidates:
            raise UserError("cuts.gradient_checkpointing: the model has no nn.ModuleList of blocks; name them in `modules`")
        lists = [max(candidates, key=lambda m: sum(p.numel() for p in m.parameters()))]
    count = 0
    for blocks in lists:
        for block in blocks:
            block.forward = functools.partial(_checkpointed, block.forward)
            count += 1
    return count


@register
class GradientCheckpointing(Cut):
    name = "gradient_checkpointing"
    Config = CheckpointingSettings
    summary = "Recompute block activations in backward instead of storing them."
    order = 20

    def prepare_model(self, model: torch.nn.Module, run) -> torch.nn.Module:
        if hasattr(model, "gradient_checkpointing_enable") and not self.config.modules:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            config = getattr(model, "config", None)
            if config is not None and hasattr(config, "use_cache"):
                config.use_cache = False  # a KV cache is useless in training and defeats checkpointing
            run.extras["checkpointed_blocks"] = "transformers"
        else:
            run.extras["checkpointed_blocks"] = checkpoint_blocks(model, self.config.modules)
        return model
