"""Knowledge distillation: train a smaller student on a teacher's soft predictions.

Why: a student with half the blocks runs about twice as fast at inference. Initialised
from the teacher's own blocks and trained to match its full output distribution (not
only the hard labels) it keeps most of the teacher's accuracy after a short fine-tune.

How it plugs into the loop: a forward hook on the student runs the teacher (no
gradients, or its logits come from the on-disk cache) on the same inputs and keeps the
student's logits; the ``adjust_example_losses`` hook then turns each example's task loss
into ``alpha * CE + (1 - alpha) * T^2 * KL`` (+ hidden-state matching). Evaluation (model
in eval mode) is left untouched: it reports the task loss.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

KEY = "cuts.distill"


class DistillSettings(CutConfig):
    shorthand_field = "teacher"
    teacher: str | None = Field(
        None, description="The teacher: a leantrain run directory, a `leantrain compress` output, a local model folder, a hub id or `bundled:NAME`. Required.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the task loss; the teacher's soft-label loss gets 1 - alpha.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of both models in the soft-label loss (scaled back by T^2).")
    keep_layers: Union[int, list[int], None] = Field(
        None, description="Make the student smaller: a number of blocks to keep (evenly spaced, 3 of 6 -> 0,2,4) or their indices. Default: the model as loaded.")
    init_from_teacher: bool = Field(True, description="Copy the teacher's weights into the student where names and shapes match (student block i from the teacher block it is mapped to).")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of a mean-squared error between mapped block outputs of student and teacher (same width needed); 0 turns it off.")
    cache_dir: str | None = Field(
        None, description="Folder for a safetensors cache of teacher logits per example (keyed by the example's tokens and the teacher's weight digest), so later epochs skip the teacher. Classification only.")


@register
class Distill(Cut):
    name = "distill"
    Config = DistillSettings
    summary = "Knowledge distillation from a teacher model into a (smaller) student, with an optional teacher-logit cache."
    order = 3  # before warm start (5) and LoRA (10): blocks are dropped and copied on the plain model

    def __init__(self, config: DistillSettings):
        super().__init__(config)
        self.teacher: torch.nn.Module | None = None
        self.mapping: list[int] = []
        self.pending: dict | None = None
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_path: Path | None = None
        self.unsaved = 0
        self.hits = self.misses = 0

    def prepare_model(self, model, run):
        from leantrain.compress.distill import (
            init_from_teacher, layer_mapping, load_teacher, shrink_student, teacher_fingerprint,
        )
        from leantrain.compress.structure import block_list

        cfg = self.config
        if not cfg.teacher:
            raise UserError(f"{KEY}.teacher: required (a run directory, model folder, hub id or bundled:NAME)")
        teacher = load_teacher(cfg.teacher, like=model)
        explicit = shrink_student(model, cfg.keep_layers)
        teacher_depth = len(block_list(teacher)[2])
        if explicit is not None and len(explicit) and max(explicit) >= teacher_depth:
            explicit = None  # indices were into a deeper student: map evenly instead
        self.mapping = layer_mapping(len(block_list(model)[2]), teacher_depth, explicit)
        if cfg.hidden_weight and teacher.config.hidden_size != model.config.hidden_size:
            raise UserError(f"{KEY}.hidden_weight: teacher width {teacher.config.hidden_size} differs from the "
                            f"student's {model.config.hidden_size}; set it to 0")
        copied = init_from_teacher(model, teacher, self.mapping) if cfg.init_from_teacher else 0
        self.teacher = teacher.to(run.device)
        if cfg.cache_dir:
            if "ForSequenceClassification" not in type(teacher).__name__:
                raise UserError(f"{KEY}.cache_dir: the logit cache is for classification (per-token LM logits are too large)")
            self.cache_path = Path(cfg.cache_dir) / f"teacher-{teacher_fingerprint(teacher)}.safetensors"
            self._load_cache()
        model.register_forward_pre_hook(self._ask_hidden_states, with_kwargs=True)
        model.register_forward_hook(self._run_teacher, with_kwargs=True)
        run.extras.update({"distill_teacher": cfg.teacher, "distill_layer_map": self.mapping,
                           "distill_tensors_from_teacher": copied})
        return model

    # -- hooks on the student's forward ---------------------------------------------------
    def _training(self, module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _ask_hidden_states(self, module, args, kwargs):
        if self.config.hidden_weight and self._training(module):
            return args, {**kwargs, "output_hidden_states": True}
        return None

    def _run_teacher(self, module, args, kwargs, output):
        if not self._training(module):
            return None
        from leantrain.compress.distill import teacher_inputs

        inputs = teacher_inputs(kwargs)
        hidden = bool(self.config.hidden_weight)
        logits = self._cached_logits(inputs) if self.cache_path and not hidden else None
        teacher_hidden = None
        if logits is None:
            with torch.no_grad():
                out = self.teacher(**inputs, output_hidden_states=hidden)
            logits, teacher_hidden = out.logits.detach().float(), out.hidden_states
            if self.cache_path and not hidden:
                self._store(inputs, logits)
        self.pending = {"student": output.logits, "teacher": logits, "teacher_hidden": teacher_hidden,
                        "student_hidden": getattr(output, "hidden_states", None) if hidden else None,
                        "attention_mask": inputs.get("attention_mask")}
        return None

    def adjust_example_losses(self, losses, batch, run):
        """alpha * CE + (1 - alpha) * T^2 * KL (+ hidden matching), per example."""
        from leantrain.compress.distill import hidden_loss_rows, kd_loss_rows

        pending, self.pending = self.pending, None
        if pending is None:  # not a training forward of the student
            return losses
        cfg = self.config
        student, teacher = pending["student"], pending["teacher"]
        per_token = teacher.dim() == 3
        if per_token:  # causal LM: positions 0..L-2 are scored against the next token
            kd = kd_loss_rows(student[:, :-1], teacher[:, :-1], cfg.temperature, batch["labels"][:, 1:]).sum(1)
        else:
            kd = kd_loss_rows(student, teacher, cfg.temperature)
        combined = cfg.alpha * losses + (1 - cfg.alpha) * kd
        if cfg.hidden_weight and pending["student_hidden"] is not None:
            combined = combined + cfg.hidden_weight * hidden_loss_rows(
                pending["student_hidden"], pending["teacher_hidden"], self.mapping, pending["attention_mask"], per_token)
        return combined

    # -- the teacher-logit cache -----------------------------------------------------------
    def _cached_logits(self, inputs: dict) -> torch.Tensor | None:
        from leantrain.compress.distill import example_keys

        keys = example_keys(inputs["input_ids"], inputs.get("attention_mask"))
        if all(k in self.cache for k in keys):
            self.hits += len(keys)
            return torch.stack([self.cache[k] for k in keys]).to(inputs["input_ids"].device)
        return None

    def _store(self, inputs: dict, logits: torch.Tensor) -> None:
        from leantrain.compress.distill import example_keys

        keys = example_keys(inputs["input_ids"], inputs.get("attention_mask"))
        self.misses += len(keys)
        for key, row in zip(keys, logits.cpu()):
            self.cache[key] = row.clone()
        self.unsaved += len(keys)

    def _load_cache(self) -> None:
        from safetensors.torch import load_file

        if self.cache_path.is_file():
            self.cache = load_file(self.cache_path)

    def _flush_cache(self) -> None:
        from safetensors.torch import save_file

        if self.cache_path is None or not self.unsaved:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        save_file(self.cache, tmp)
        os.replace(tmp, self.cache_path)
        self.unsaved = 0

    def state_dict(self):
        self._flush_cache()  # a checkpoint is a safe point to persist the cache too
        return {}

    def on_fit_end(self, run) -> bool:
        self._flush_cache()
        if self.cache_path is not None:
            run.extras.update({"distill_cache_hits": self.hits, "distill_cache_misses": self.misses})
        return False
