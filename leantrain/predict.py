"""Predict with a trained run: one JSON line per input.

Loads the run's saved model from its folder alone, with transformers + PEFT, so what
`leantrain predict` says is what the artefact really does.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
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
    try:
        if (model_dir / "config.json").is_file() and not meta["adapter"]:
            model = auto.from_pretrained(model_dir)
        elif (model_dir / "config.json").is_file():
            # Base + adapter in one folder. Plain transformers loads it whole (its PEFT
            # integration adds the adapter; tests check that gives these logits); here it is a
            # PeftModel, so compress and export can still merge the adapter into the base.
            from peft import PeftModel

            with _base_only(model_dir) as base_dir:
                model = PeftModel.from_pretrained(auto.from_pretrained(base_dir), model_dir)
        else:
            from peft import PeftModel

            from leantrain.models.loading import resolve_model_path

            # Adapter only (a causal LM's base is the published one): the recorded base, the
            # bundled copy for a bundled model's hub id. model/base: runs saved by earlier versions.
            old_base = model_dir / "base"
            base_path = old_base if old_base.is_dir() else resolve_model_path(
                meta.get("base_model_name_or_path") or meta["base_model_path"])
            kwargs = {}
            if classify:
                labels = meta["labels"]
                # ignore_mismatched_sizes: as in training, a base with another head size gets a
                # fresh head, which the adapter's saved head (modules_to_save) then replaces.
                kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                          "label2id": {n: i for i, n in enumerate(labels)}, "ignore_mismatched_sizes": True}
            model = PeftModel.from_pretrained(auto.from_pretrained(base_path, **kwargs), model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"{run_dir}: cannot load the saved model: {str(exc).strip().splitlines()[0]}") from None
    return model.eval(), tokenizer, meta


@contextlib.contextmanager
def _base_only(model_dir: Path):
    """A view of ``model_dir`` without its adapter files, so that transformers loads the
    base alone (it has no switch to skip an adapter it finds)."""
    with tempfile.TemporaryDirectory(prefix="leantrain-base-") as view:
        for item in model_dir.iterdir():
            if item.is_file() and not item.name.startswith("adapter_"):
                try:
                    os.symlink(item.resolve(), Path(view) / item.name)
                except OSError:  # no symlinks here (some Windows set-ups): copy
                    shutil.copy2(item, Path(view) / item.name)
        yield view


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
def predict(run_dir: str | Path, texts: Iterable[str], batch_size: int = 32, max_new_tokens: int | None = None) -> Iterator[dict]:
    max_new_tokens = max_new_tokens or 20
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
        elif meta.get("format", "text") != "text":
            for text in chunk:
                yield {"text": text, "reply": chat_reply(model, tokenizer, meta, text, max_new_tokens)}
        else:
            for text in chunk:
                enc = tokenizer(text, return_tensors="pt")
                enc = {k: enc[k] for k in ("input_ids", "attention_mask")}  # no token_type_ids
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                yield {"text": text, "continuation": tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)}


def chat_reply(model, tokenizer, meta: dict, text: str, max_new_tokens: int) -> str:
    """The model's answer to ``text`` as a user turn (after the run's system prompt, if
    any), rendered with the chat template the run trained with; greedy decoding."""
    turns = ([{"role": "system", "content": meta["system_prompt"]}] if meta.get("system_prompt") else []) + [
        {"role": "user", "content": text}]
    from leantrain.engine.chat_eval import greedy_reply

    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return greedy_reply(model, tokenizer, tokenizer(prompt, add_special_tokens=False)["input_ids"], max_new_tokens)


@torch.no_grad()
def chat(run_dir: str | Path, lines: Iterable[str], write, max_new_tokens: int = 128) -> None:
    """``leantrain predict RUN_DIR --interactive``: one reply per line read (single turns)."""
    model, tokenizer, meta = load_run_model(run_dir)
    if meta["task"] != "causal-lm" or not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{run_dir}: --interactive needs a causal LM whose tokenizer has a chat template "
                        f"(this run: {meta['task']}, {'a' if getattr(tokenizer, 'chat_template', None) else 'no'} template)")
    for line in lines:
        if line.strip():
            write(chat_reply(model, tokenizer, meta, line.strip(), max_new_tokens))
