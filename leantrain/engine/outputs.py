"""What a run leaves behind: the model (or adapter), its label map, and summary.json."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from leantrain.models.loading import portable_model_name
from leantrain.observe.memory import peak_rss_bytes
from leantrain.plan.ledger import find_ledger

SUMMARY_VERSION = 1


def _write_json(path: Path, data: dict) -> None:
    # Write-then-rename: a reader (or a crash) never sees half a file.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model(run_dir: Path, recipe, model, tokenizer, data_info, cuts, run, state_dict: dict | None = None) -> dict[str, str]:
    """Save the trained weights (only the adapter with LoRA) plus what predict needs, as a
    folder plain transformers loads (``from_pretrained``, ``pipeline``) with no leantrain code.
    ``state_dict``: the weights when the model holds only shards of them (FSDP)."""
    out = run_dir / "model"
    if (out / "leantrain.json").is_file():
        # A previous run's model: remove it whole. A stale adapter_config.json left next to
        # a full model would make transformers load that old adapter on top of it.
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = hasattr(model, "peft_config")  # a PEFT model saves only its adapter
    custom = tokenizer is None and data_info is None  # the user's own torch.nn.Module
    base_name = None if custom else portable_model_name(recipe.model.name_or_path)
    if hasattr(model, "save_pretrained"):
        if adapter and not custom and (recipe.model.from_scratch or recipe.model.task == "sequence-classification"):
            _save_base_beside_adapter(model, out, state_dict)
        model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
        if adapter and base_name:
            _record_portable_base(out / "adapter_config.json", base_name)
    else:
        from safetensors.torch import save_file

        whole = model.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in whole.items()}
        save_file(state, out / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if custom:
        meta = {"task": "custom", "module": type(model).__name__, "adapter": adapter}
    else:
        meta = {
            "task": recipe.model.task,
            "base_model": recipe.model.name_or_path,
            "base_model_name_or_path": base_name,
            "adapter": adapter,
            "labels": data_info.label_names if data_info else None,
            "max_length": recipe.data.max_length,
            # Chat runs: predict renders inputs as user turns with the saved tokenizer's template.
            **({"format": recipe.data.format, "system_prompt": recipe.data.chat.system_prompt}
               if recipe.data.format != "text" else {}),
        }
    _write_json(out / "leantrain.json", meta)
    saved = {"model": str(out)}
    saved.update(cuts.on_save(model, out, run))
    if tokenizer is not None:  # every exported model folder (merged, pruned) loads on its own
        for folder in saved.values():
            if (Path(folder) / "config.json").is_file() and not (Path(folder) / "tokenizer_config.json").is_file():
                tokenizer.save_pretrained(folder)
    return saved


def _save_base_beside_adapter(model, out: Path, state_dict: dict | None) -> None:
    """The base weights (config.json with the label names, model.safetensors) next to the
    adapter. Transformers treats such a folder as a model with an embedded adapter: it reads
    the labels from config.json and loads the adapter on top, offline. Without them it would
    fetch the base config, which knows neither the labels nor their number. A from-scratch
    base exists nowhere else; a quantized base is saved as its dequantized float values,
    exactly what the adapters trained on."""
    if state_dict is not None:  # FSDP: the gathered PEFT state, renamed to the base's keys
        model.get_base_model().save_pretrained(out, state_dict=base_weights(state_dict))
        return
    from leantrain.models.low_bit import dequantized_copy

    dequantized_copy(model).unload().save_pretrained(out)


def _record_portable_base(config_path: Path, base_name: str) -> None:
    """Name the base by its hub id (or as the user gave it), never a path into this
    machine's virtual environment. Edited after saving: PEFT's save looks the recorded base
    up (for a changed vocabulary), which for a hub id would be a network call."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    _write_json(config_path, config)


def base_weights(peft_state: dict) -> dict:
    """The base model's state dict inside a LoRA model's: adapter tensors dropped, wrapped
    layers (``base_layer``, ``original_module``) back under their own names."""
    base = {}
    for key, value in peft_state.items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        base[name] = value
    return base


def _param_counts(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def write_summary(run_dir: Path, recipe, run, cuts, final_eval: dict, saved: dict, prepare_seconds: float, peak,
                  signal_name: str | None = None, data: dict | None = None) -> dict:
    state = run.state
    trainable, total = _param_counts(run.model) if run.model is not None else (0, 0)
    price = recipe.hardware.price_per_hour  # per device-hour; a run on W devices pays W times
    world = run.world_size
    summary = {
        "version": SUMMARY_VERSION,
        "status": state.status,
        "stop_reason": state.stop_reason,
        "signal": signal_name,
        "skipped_steps": state.skipped_steps,
        "resumed_from_steps": state.resumed_from,
        "eval": final_eval,
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / max(run.batches_per_epoch, 1), 3),
        "samples_seen": state.samples_seen,
        "train_seconds": round(state.train_seconds, 3),
        "samples_per_second": round(state.samples_seen / state.train_seconds, 3) if state.train_seconds else 0.0,
        "data_wait_fraction": round(state.data_wait_seconds / state.train_seconds, 4) if state.train_seconds else 0.0,
        "setup_seconds": round(prepare_seconds, 3),  # data, model and cuts, before the first step
        "data": {
            "prepare_seconds": round(prepare_seconds, 3),  # without a data pipeline: all set-up time
            **{k: v for k, v in (data or {}).items() if not isinstance(v, (list, tuple))},
            "data_wait_fraction": round(state.data_wait_seconds / state.train_seconds, 4) if state.train_seconds else 0.0,
        },
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_bytes": peak[0],
        "peak_memory_method": peak[1],
        "peak_rss_bytes": peak_rss_bytes(),
        "price_per_hour": price,
        "world_size": world,
        "cost_usd": round(price * world * state.train_seconds / 3600, 6),
        "cuts": cuts.names(),
        "device": str(run.device),
        "extras": run.extras,
        "saved": saved,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **_lib_versions()},
    }
    ledger = find_ledger(cuts)
    if ledger is not None:  # the cost ledger's price (catalog-aware, all devices) and MFU
        summary.update(ledger.summary_fields(run))
    if run.parallel.is_main:  # under torchrun, rank 0 writes for all
        _write_json(run_dir / "summary.json", summary)
    return summary


def _lib_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("leantrain", "transformers", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
