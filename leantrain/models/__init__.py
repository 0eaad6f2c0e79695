"""Load pretrained models and tokenizers: hub ids, local folders, or bundled models."""
from leantrain.models.loading import load_model, load_tokenizer, resolve_model_path

__all__ = ["load_model", "load_tokenizer", "resolve_model_path"]
