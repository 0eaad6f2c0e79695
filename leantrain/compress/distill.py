"""Knowledge distillation: a teacher, a student made from it, and the loss between them.

The loss (Hinton et al. 2015) is ``alpha * task + (1 - alpha) * T^2 * KL(teacher_T || student_T)``
where ``_T`` means softmax at temperature T; the T^2 keeps the soft term's gradients on
the task term's scale as T changes. Every function here works per row and *sums*, like
leantrain's tasks, so gradient accumulation stays exact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from leantrain.compress.structure import block_list, evenly_spaced, keep_blocks, unwrap
from leantrain.errors import UserError

IGNORE_INDEX = -100
TEACHER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def load_teacher(source: str, like: nn.Module) -> nn.Module:
    """The teacher as a plain float model in eval mode with gradients off.

    ``source``: a leantrain run directory (its adapter is merged into its base), a folder
    written by ``leantrain compress``, a local model folder or a hub id, or ``bundled:NAME``.
    A model of the student's class is loaded for the last three, with its label count.
    """
    from leantrain.models.loading import _quiet_transformers, resolve_model_path

    _quiet_transformers()
    path = Path(source)
    meta = path / "leantrain.json"
    if (path / "model" / "leantrain.json").is_file():
        from leantrain.predict import load_run_model

        teacher = load_run_model(path)[0]
        if hasattr(teacher, "merge_and_unload"):
            teacher = teacher.merge_and_unload()
    elif meta.is_file() and "compressed" in json.loads(meta.read_text(encoding="utf-8")):
        from leantrain.compress.io import load_compressed

        teacher = load_compressed(path)[0]
    else:
        config = getattr(unwrap(like), "config", None)
        kwargs = {"num_labels": config.num_labels} if "ForSequenceClassification" in type(unwrap(like)).__name__ else {}
        try:
            teacher = type(unwrap(like)).from_pretrained(resolve_model_path(source), **kwargs)
        except (OSError, ValueError) as exc:
            raise UserError(f"cuts.distill.teacher: cannot load {source!r}: {str(exc).splitlines()[0]}") from None
    teacher = teacher.float().eval()
    teacher.requires_grad_(False)
    return teacher


def layer_mapping(student_layers: int, teacher_layers: int, explicit: list[int] | None = None) -> list[int]:
    """Which teacher block each student block learns from (and is initialised from)."""
    mapping = explicit if explicit is not None else evenly_spaced(student_layers, teacher_layers)
    if len(mapping) != student_layers or any(not 0 <= i < teacher_layers for i in mapping):
        raise UserError(f"cuts.distill.keep_layers {mapping}: need {student_layers} indices in 0..{teacher_layers - 1}")
    return mapping


def shrink_student(student: nn.Module, keep_layers: int | list[int] | None) -> list[int] | None:
    """Drop student blocks as ``keep_layers`` says; returns the explicit teacher mapping, if any."""
    if keep_layers is None:
        return None
    depth = len(block_list(student)[2])
    keep = evenly_spaced(keep_layers, depth) if isinstance(keep_layers, int) else list(keep_layers)
    keep_blocks(student, keep)
    return keep


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, mapping: list[int]) -> int:
    """Copy every teacher tensor whose renamed key and shape match; returns how many.

    Student block i takes teacher block ``mapping[i]``; embeddings, pooler and head are
    copied by name. Tensors of other shapes (a narrower student) keep their own init.
    """
    student, teacher = unwrap(student), unwrap(teacher)
    s_prefix = _block_prefix(student)
    t_prefix = _block_prefix(teacher)
    teacher_state = teacher.state_dict()
    copied = 0
    for key, tensor in student.state_dict().items():
        source_key = key
        if key.startswith(s_prefix):
            index, rest = key[len(s_prefix):].split(".", 1)
            source_key = f"{t_prefix}{mapping[int(index)]}.{rest}"
        source = teacher_state.get(source_key)
        if source is not None and source.shape == tensor.shape:
            tensor.copy_(source.to(tensor.dtype))
            copied += 1
    return copied


def _block_prefix(model: nn.Module) -> str:
    blocks = block_list(model)[2]
    for name, module in model.named_modules():
        if module is blocks:
            return f"{name}."
    raise RuntimeError("block list not found among the model's modules")


def kd_loss_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                target: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), summed over rows (rows whose target is ignored skip)."""
    return kd_loss_rows(student_logits, teacher_logits, temperature, target).sum()


def kd_loss_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                 target: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) per position (all dims but the last), zero where
    the target is ignored."""
    if student_logits.shape != teacher_logits.shape:
        raise UserError(f"cuts.distill: teacher outputs {tuple(teacher_logits.shape)} but the student "
                        f"{tuple(student_logits.shape)}: teacher and student need the same labels (or vocabulary)")
    t = temperature
    rows = F.kl_div(F.log_softmax(student_logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                    log_target=True, reduction="none").sum(-1)
    if target is not None:
        rows = rows * (target != IGNORE_INDEX)
    return rows * t * t


def hidden_loss_rows(student_hidden, teacher_hidden, mapping: list[int], attention_mask: torch.Tensor | None,
                     per_token: bool) -> torch.Tensor:
    """Mean squared error between mapped block outputs (and embeddings), one value per row.

    ``per_token``: summed over the row's tokens (causal LM, whose loss is counted per
    token); otherwise averaged over them (classification, counted per sample).
    """
    pairs = [(0, 0)] + [(i + 1, m + 1) for i, m in enumerate(mapping)]
    first = student_hidden[0]
    mask = attention_mask.to(torch.float32) if attention_mask is not None else first.new_ones(first.shape[:2], dtype=torch.float32)
    total = mask.new_zeros(mask.shape[0])
    for s, t in pairs:
        per_position = (student_hidden[s].float() - teacher_hidden[t].float()).pow(2).mean(-1) * mask
        total = total + (per_position.sum(1) if per_token else per_position.sum(1) / mask.sum(1).clamp(min=1))
    return total / len(pairs)


def teacher_inputs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in TEACHER_INPUTS and v is not None}


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A digest of the teacher's weights: cached logits are only reused for the same teacher."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def example_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[str]:
    """One key per row: a digest of its unpadded token ids (stable across epochs and orders)."""
    keys = []
    for i, row in enumerate(input_ids.cpu()):
        if attention_mask is not None:
            row = row[attention_mask[i].cpu().bool()]
        keys.append(hashlib.sha1(row.to(torch.int64).numpy().tobytes()).hexdigest())
    return keys
