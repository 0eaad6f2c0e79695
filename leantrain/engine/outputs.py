"""What a run leaves behind: the model (or adapter), its label map, and summary.json."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from leantrain.observe.memory import peak_rss_bytes
from leantrain.plan.ledger import find_ledger

SUMMARY_VERSION = 1


def _write_json(path: Path, data: dict) -> None:
    # Write-then-rename: a reader (or a crash) never sees half a file.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model(run_dir: Path, recipe, model, tokenizer, data_info, cuts, run, state_dict: dict | None = None) -> dict[str, str]:
    """Save the trained weights (only the adapter with LoRA) plus what predict needs.
    ``state_dict``: the weights when the model holds only shards of them (FSDP)."""
    out = run_dir / "model"
    if (out / "leantrain.json").is_file():
        # A previous run's model: remove it whole. A stale adapter_config.json left next to
        # a full model would make transformers load that old adapter on top of it.
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = hasattr(model, "peft_config")  # a PEFT model saves only its adapter
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
        if recipe.model.from_scratch and adapter:
            # The randomly initialised base exists nowhere else; without it the adapter is
            # unusable. Save it (adapters removed) next to the adapter, in model/base; a
            # quantized base (cuts.quantized_base) is saved as its dequantized float values.
            from leantrain.models.low_bit import dequantized_copy

            dequantized_copy(model).unload().save_pretrained(out / "base")
    else:
        from safetensors.torch import save_file

        whole = model.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in whole.items()}
        save_file(state, out / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    from leantrain.models import resolve_model_path

    if tokenizer is None and data_info is None:
        # The user's own torch.nn.Module: the recipe's model section was not used.
        meta = {"task": "custom", "module": type(model).__name__, "adapter": adapter}
    else:
        meta = {
            "task": recipe.model.task,
            "base_model": recipe.model.name_or_path,
            "base_model_path": resolve_model_path(recipe.model.name_or_path),
            "adapter": adapter,
            "labels": data_info.label_names if data_info else None,
            "max_length": recipe.data.max_length,
        }
    _write_json(out / "leantrain.json", meta)
    saved = {"model": str(out)}
    saved.update(cuts.on_save(model, out, run))
    return saved


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
