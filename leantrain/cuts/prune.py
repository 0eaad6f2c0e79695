"""Pruning during training: a gradual sparsity schedule, then a recovery fine-tune.

Why: removing 30% of the FFN neurons (or some attention heads) makes every forward
cheaper for good; doing it gradually while the model keeps training lets the remaining
units take over, which a one-shot cut after training cannot do.

How: the sparsity rises along Zhu & Gupta's cubic schedule from ``start`` to ``end``
(fractions of the run); the steps after ``end`` are the recovery fine-tune. Structured
methods mask units on the activations (a forward pre-hook on the consuming Linear), so no
parameter changes shape mid-run and the optimizer, LoRA and checkpoints are undisturbed;
the saved ``model/pruned`` folder holds the physically smaller model (fewer rows and
columns, a smaller file). ``magnitude`` zeros the smallest weights globally
(``torch.nn.utils.prune``) and keeps them zero after every optimizer step.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

KEY = "cuts.prune"


class PruneSettings(CutConfig):
    shorthand_field = "method"
    method: Literal["ffn", "heads", "magnitude"] = Field(
        "ffn", description="What to remove: `ffn` neurons or attention `heads` (structured, the saved model really shrinks), or single weights by `magnitude` (unstructured zeros).")
    sparsity: float = Field(0.3, ge=0, lt=1, description="Final fraction removed: of each block's FFN neurons or heads, or of all block weights (magnitude).")
    importance: Literal["activation", "weight"] = Field(
        "activation", description="Structured score: mean |activation| seen in training times the outgoing weight norm (`activation`), or weight norms alone (`weight`).")
    start: float = Field(0.0, ge=0, lt=1, description="Fraction of the run at which pruning starts.")
    end: float = Field(0.7, gt=0, le=1, description="Fraction of the run at which the final sparsity is reached; the rest of the run is the recovery fine-tune.")
    updates: int = Field(5, ge=1, description="How many times the sparsity rises between `start` and `end` (cubic schedule).")

    @model_validator(mode="after")
    def _start_before_end(self):
        if self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        return self


def sparsity_at(progress: float, cfg: PruneSettings) -> float:
    """Zhu & Gupta (2017): s_f * (1 - (1 - p)^3), rising fast first and gently near the end."""
    p = min(max((progress - cfg.start) / (cfg.end - cfg.start), 0.0), 1.0)
    return cfg.sparsity * (1 - (1 - p) ** 3)


def _weight(layer) -> torch.Tensor:
    return getattr(layer, "base_layer", layer).weight


@register
class Prune(Cut):
    name = "prune"
    Config = PruneSettings
    summary = "Gradual structured (FFN neurons, attention heads) or magnitude pruning with a recovery fine-tune."
    order = 15  # after LoRA (10): the hooks sit on the wrapped layers; before checkpointing (20)

    def __init__(self, config: PruneSettings):
        super().__init__(config)
        self.layers: list = []          # per block: the Linear consuming the pruned units
        self.masks: list[torch.Tensor] = []
        self.activity: list[torch.Tensor] = []
        self.unit = 1                   # input features per unit (head size for heads)
        self.hook_ids: list[int] = []
        self.done_updates = 0

    def prepare_model(self, model, run):
        from leantrain.compress.structure import attentions, feed_forwards

        cfg = self.config
        if cfg.method == "magnitude":
            if hasattr(model, "peft_config"):
                raise UserError(f"{KEY}.method: magnitude pruning under LoRA is undone when the adapter is merged; use ffn or heads")
            return model
        if cfg.method == "ffn":
            self.layers = [ff.down for ff in feed_forwards(model)]
        else:
            atts = attentions(model)
            self.layers, self.unit = [a.out for a in atts], atts[0].head_size
        for layer in self.layers:
            width = layer.in_features
            self.masks.append(torch.ones(width // self.unit, device=_weight(layer).device))
            self.activity.append(torch.zeros(width, dtype=torch.float64))
            self.hook_ids.append(layer.register_forward_pre_hook(self._mask_hook(len(self.masks) - 1)).id)
        return model

    def _mask_hook(self, index: int):
        def hook(module, args):
            x = args[0]
            if module.training and torch.is_grad_enabled():
                self.activity[index] += x.detach().abs().reshape(-1, x.shape[-1]).sum(0).double().cpu()
            if bool((self.masks[index] < 1).any()):
                mask = self.masks[index].to(x.device, x.dtype).repeat_interleave(self.unit)
                return (x * mask,) + tuple(args[1:])
            return None
        return hook

    # -- the schedule ----------------------------------------------------------------------
    def _update_points(self, total_steps: int) -> list[int]:
        cfg = self.config
        first, last = cfg.start * total_steps, cfg.end * total_steps
        return [max(1, round(first + (last - first) * (i + 1) / cfg.updates)) for i in range(cfg.updates)]

    def on_step_end(self, run):
        points = self._update_points(run.total_steps)
        if self.done_updates < len(points) and run.state.step >= points[self.done_updates]:
            self.done_updates += 1
            target = sparsity_at(run.state.step / max(run.total_steps, 1), self.config)
            if self.done_updates == len(points):
                target = self.config.sparsity
            if self.config.method == "magnitude":
                self._magnitude(run.model, target)
            else:
                self._structured(target)
            run.log({"event": "prune", "sparsity": round(target, 4)})
        if self.config.method == "magnitude" and self.masks:
            with torch.no_grad():  # the optimizer step moved pruned weights: zero them again
                for param, mask in zip(self._magnitude_params(run.model), self.masks):
                    param.mul_(mask.to(param.device))

    def _structured(self, target: float) -> None:
        from leantrain.compress.prune import keep_count, top_indices

        for i, layer in enumerate(self.layers):
            outgoing = _weight(layer).detach().float().norm(dim=0).cpu()
            if self.config.importance == "activation" and self.activity[i].any():
                per_feature = self.activity[i].float() * outgoing
            else:
                per_feature = outgoing
            scores = per_feature.reshape(-1, self.unit).sum(1)
            scores[self.masks[i].cpu() < 1] = -float("inf")  # once pruned, stays pruned
            keep = keep_count(len(scores), target)
            mask = torch.zeros_like(self.masks[i])
            mask[top_indices(scores, keep).to(mask.device)] = 1
            self.masks[i] = mask

    def _magnitude_params(self, model) -> list[torch.nn.Parameter]:
        from leantrain.compress.structure import feed_forwards

        return [layer.weight for ff in feed_forwards(model) for layer in (*ff.up, ff.down) if layer.weight.requires_grad]

    def _magnitude(self, model, target: float) -> None:
        import torch.nn.utils.prune as torch_prune

        params = self._magnitude_params(model)
        if not params:
            raise UserError(f"{KEY}: magnitude pruning needs trainable block weights (none are trainable)")
        modules = [m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)
                   and any(m.weight is p for p in params)]
        torch_prune.global_unstructured([(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured, amount=target)
        for module in modules:
            torch_prune.remove(module, "weight")
        self.masks = [(p.detach() != 0).to(p.dtype) for p in self._magnitude_params(model)]

    # -- results ---------------------------------------------------------------------------
    def on_fit_end(self, run) -> bool:
        if self.masks:
            removed = sum(int((m < 1).sum()) for m in self.masks) / sum(m.numel() for m in self.masks)
            run.extras["prune_sparsity"] = round(removed, 4)
            run.extras["prune_method"] = self.config.method
        return False

    def shrunk_copy(self, model):
        """A float copy of the model (adapter merged) with the pruned units really removed."""
        from leantrain.compress.prune import prune_ffn, prune_heads

        plain = copy.deepcopy(model)
        if hasattr(plain, "merge_and_unload"):
            plain = plain.merge_and_unload()
        for module in plain.modules():
            for hook_id in self.hook_ids:
                module._forward_pre_hooks.pop(hook_id, None)
        plain = plain.float()
        if self.config.method in ("ffn", "heads") and self.masks:
            keep = int(self.masks[0].sum())
            shrink = prune_ffn if self.config.method == "ffn" else prune_heads
            shrink(plain, 0.0, scores=[m.float().cpu() for m in self.masks], keep=keep)
        return plain

    def on_save(self, model, out_dir, run):
        if self.config.method == "magnitude" or not self.masks:
            return {}  # magnitude pruning keeps shapes: the saved model is already the result
        from leantrain.compress.io import file_bytes, save_compressed

        target = Path(out_dir) / "pruned"
        meta_path = Path(out_dir) / "leantrain.json"
        import json

        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        meta = {**meta, "adapter": False}
        save_compressed(self.shrunk_copy(model), target, meta, tokenizer=run.tokenizer)
        run.extras["pruned_model_bytes"] = file_bytes(target)
        return {"pruned_model": str(target)}

    def state_dict(self):
        return {"masks": [m.cpu() for m in self.masks], "activity": list(self.activity), "done_updates": self.done_updates}

    def load_state_dict(self, state):
        if not state:
            return
        self.done_updates = state["done_updates"]
        if self.config.method == "magnitude":
            self.masks = list(state["masks"])
        else:
            self.masks = [m.to(old.device) for m, old in zip(state["masks"], self.masks)]
        self.activity = [a.double() for a in state["activity"]]
