"""Predict with a trained run: one JSON line per input.

Loads the run's saved model the same way a user would with plain transformers + PEFT,
so what `leantrain predict` says is what the artefact really does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch

from leantrain.errors import DataError, UserError


def load_run_model(run_dir: str | Path):
    """(model, tokenizer, meta) from ``RUN_DIR/model``: base model + adapter, or a full model."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from leantrain.models.loading import _quiet_transformers

    _quiet_transformers()
    model_dir = Path(run_dir) / "model"
    meta_path = model_dir / "leantrain.json"
    if not meta_path.is_file():
        raise UserError(f"{run_dir}: not a leantrain run with a saved model (no model/leantrain.json)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta["task"] == "custom":
        raise UserError(f"{run_dir}: trained a custom torch.nn.Module ({meta.get('module')}); load {model_dir} into it yourself")
    classify = meta["task"] == "sequence-classification"
    auto = AutoModelForSequenceClassification if classify else AutoModelForCausalLM
    kwargs = {}
    if classify:
        labels = meta["labels"]
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    try:
        if meta["adapter"]:
            from peft import PeftModel

            # A from-scratch base has no weights anywhere else: the run saved them in model/base.
            base_path = model_dir / "base" if (model_dir / "base").is_dir() else meta["base_model_path"]
            # ignore_mismatched_sizes: as in training, a base with another head size gets a
            # fresh head, which the adapter's saved head (modules_to_save) then replaces.
            base = auto.from_pretrained(base_path, **kwargs, **({"ignore_mismatched_sizes": True} if classify else {}))
            model = PeftModel.from_pretrained(base, model_dir)
        else:
            model = auto.from_pretrained(model_dir, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"{run_dir}: cannot load the saved model: {str(exc).strip().splitlines()[0]}") from None
    return model.eval(), tokenizer, meta


def read_inputs(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts from CSV/JSONL/Parquet (``text_column``) or a plain text file (one per line)."""
    from leantrain.data.sources import FORMATS, read_rows

    path = Path(path)
    if path.suffix.lower() in FORMATS:
        return [str(r[text_column]) for r in read_rows(path, columns=[text_column])]
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    try:
        lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{path}: no input lines")
    return texts


@torch.no_grad()
def predict(run_dir: str | Path, texts: Iterable[str], batch_size: int = 32, max_new_tokens: int = 20) -> Iterator[dict]:
    model, tokenizer, meta = load_run_model(run_dir)
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        if meta["task"] == "sequence-classification":
            enc = tokenizer(chunk, truncation=True, max_length=meta["max_length"], padding=True, return_tensors="pt")
            probs = model(**enc).logits.float().softmax(-1)
            for text, p in zip(chunk, probs):
                yield {
                    "text": text,
                    "label": meta["labels"][int(p.argmax())],
                    "probabilities": {name: round(float(v), 6) for name, v in zip(meta["labels"], p)},
                }
        else:
            for text in chunk:
                enc = tokenizer(text, return_tensors="pt")
                enc = {k: enc[k] for k in ("input_ids", "attention_mask")}  # no token_type_ids
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                yield {"text": text, "continuation": tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)}
