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


def load_model_state(model: torch.nn.Module, saved: dict[str, torch.Tensor], parallel=None) -> None:
    current = model_state(model)
    missing = sorted(set(current) - set(saved))
    if missing:
        raise CheckpointError(f"checkpoint does not match the model: no value for {missing[0]!r}")
    if parallel is not None and parallel.fsdp:  # each rank keeps its shard of the whole tensors
        parallel.load_weights(model, {key.split(".", 1)[1]: saved[key] for key in current})
        return
    with torch.no_grad():
        for key, target in current.items():
            target.copy_(saved[key])


def _names_in_optimizer_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _rekey(optimizer_state: dict, mapping: dict) -> dict:
    """The optimizer state with parameter keys translated (numbers <-> names)."""
    groups = [{**g, "params": [mapping[p] for p in g["params"]]} for g in optimizer_state["param_groups"]]
    return {"state": {mapping[k]: v for k, v in optimizer_state["state"].items()}, "param_groups": groups}


def collect_snapshot(run, cuts) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint's contents as (JSON state, tensors). Under FSDP this gathers the
    shards whole and every rank must call it; otherwise it only takes references."""
    parallel = run.parallel
    tensors: dict[str, torch.Tensor] = {}
    with parallel.full_weights(run.model):
        weights = model_state(run.model)
        if parallel.fsdp:  # the gathered copies are freed when the weights are sharded again
            weights = {k: v.detach().cpu().clone() for k, v in weights.items()}
    state = {
        "format": FORMAT_VERSION,
        "model": split_tensors(weights, "model", tensors),
        "optimizer": split_tensors(parallel.optimizer_state(run.model, run.optimizer), "optimizer", tensors),
        "optimizer_keys": "names" if parallel.fsdp else "numbers",
        "scheduler": split_tensors(run.scheduler.state_dict(), "scheduler", tensors),
        "rng": split_tensors(rng_state(), "rng", tensors),
        "train_state": run.state.to_dict(),
        "cuts": split_tensors(cuts.state_dict(), "cuts", tensors),
        "extras": split_tensors(run.extras, "extras", tensors),
    }
    return state, tensors


def write_snapshot(folder: Path, collected: tuple[dict, dict[str, torch.Tensor]]) -> None:
    state, tensors = collected
    save_tensors(folder / TENSORS, tensors)
    write_json(folder / STATE, state)


def save_snapshot(folder: Path, run, cuts) -> None:
    write_snapshot(folder, collect_snapshot(run, cuts))


def load_snapshot(folder: Path, run, cuts) -> None:
    """Restore the run from ``folder``; every rank loads the same whole checkpoint (under
    FSDP each keeps its shard), whatever number of ranks or strategy wrote it."""
    import json

    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / STATE}: unreadable ({exc})") from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
    tensors = load_tensors(folder / TENSORS)
    parallel = run.parallel
    load_model_state(run.model, join_tensors(state["model"], tensors), parallel)
    optimizer_state = join_tensors(state["optimizer"], tensors)
    names = _names_in_optimizer_order(run.model, run.optimizer)
    if state.get("optimizer_keys", "numbers") == "numbers":  # JSON turned the numbers into strings
        optimizer_state["state"] = {int(k): v for k, v in optimizer_state["state"].items()}
    else:  # written under FSDP: keyed by parameter name
        optimizer_state = _rekey(optimizer_state, {n: i for i, n in enumerate(names)})
    if parallel.fsdp:
        parallel.load_optimizer_state(run.model, run.optimizer, _rekey(optimizer_state, dict(enumerate(names))))
    else:
        run.optimizer.load_state_dict(optimizer_state)
    run.scheduler.load_state_dict(join_tensors(state["scheduler"], tensors))
    cuts.load_state_dict(join_tensors(state["cuts"], tensors))
    run.state = TrainState.from_dict(state["train_state"])
    run.extras.update(join_tensors(state.get("extras", {}), tensors))
    set_rng_state(join_tensors(state["rng"], tensors))
