"""Everything a run needs to continue exactly, written to / read from a checkpoint folder.

Trainable weights (only the adapter with LoRA) and buffers, optimizer, scheduler, every
RNG (Python, NumPy, torch CPU and CUDA), the train state with its data cursor, and each
cut's own state. Tensors go to ``tensors.safetensors``; all the rest to ``state.json``,
with each tensor replaced by a reference to its key: nothing is ever pickled.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leantrain.engine.checkpoint import CheckpointError, load_tensors, save_tensors, write_json
from leantrain.engine.state import TrainState

TENSORS = "tensors.safetensors"
STATE = "state.json"
FORMAT_VERSION = 1


def split_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``obj`` with every tensor moved into ``out`` under a path key."""
    if torch.is_tensor(obj):
        out[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): split_tensors(v, f"{prefix}.{k}", out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", out) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint state refers to a missing tensor {key!r}")
            return tensors[key]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters and all buffers (not the frozen base)."""
    state = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    state.update({f"buffer.{n}": b for n, b in model.named_buffers()})
    return state


def load_model_state(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    current = model_state(model)
    missing = sorted(set(current) - set(saved))
    if missing:
        raise CheckpointError(f"checkpoint does not match the model: no value for {missing[0]!r}")
    with torch.no_grad():
        for key, target in current.items():
            target.copy_(saved[key])


def save_snapshot(folder: Path, run, cuts) -> None:
    tensors: dict[str, torch.Tensor] = {}
    state = {
        "format": FORMAT_VERSION,
        "model": split_tensors(model_state(run.model), "model", tensors),
        "optimizer": split_tensors(run.optimizer.state_dict(), "optimizer", tensors),
        "scheduler": split_tensors(run.scheduler.state_dict(), "scheduler", tensors),
        "rng": split_tensors(rng_state(), "rng", tensors),
        "train_state": run.state.to_dict(),
        "cuts": split_tensors(cuts.state_dict(), "cuts", tensors),
        "extras": split_tensors(run.extras, "extras", tensors),
    }
    save_tensors(folder / TENSORS, tensors)
    write_json(folder / STATE, state)


def load_snapshot(folder: Path, run, cuts) -> None:
    import json

    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / STATE}: unreadable ({exc})") from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
    tensors = load_tensors(folder / TENSORS)
    load_model_state(run.model, join_tensors(state["model"], tensors))
    optimizer_state = join_tensors(state["optimizer"], tensors)
    optimizer_state["state"] = {int(k): v for k, v in optimizer_state["state"].items()}
    run.optimizer.load_state_dict(optimizer_state)
    run.scheduler.load_state_dict(join_tensors(state["scheduler"], tensors))
    cuts.load_state_dict(join_tensors(state["cuts"], tensors))
    run.state = TrainState.from_dict(state["train_state"])
    run.extras.update(join_tensors(state.get("extras", {}), tensors))
    set_rng_state(join_tensors(state["rng"], tensors))
