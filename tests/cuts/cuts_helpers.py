"""Shared helpers for the cost-cut tests (imported by the test modules of this folder)."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch

from leantrain.observe.accountant import SavedTensorCounter

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def shared_conftest():
    """tests/testdata.py and tests/conftest.py together (make_topic_rows, write_csv, TOPIC_WORDS, ...)."""
    import types

    merged = types.SimpleNamespace()
    for name in ("testdata", "conftest"):
        spec = importlib.util.spec_from_file_location(f"leantrain_tests_{name}", REPO / "tests" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return merged


def run_context(**kwargs):
    from leantrain.engine.context import RunContext

    return RunContext(device=CPU, train=None, **kwargs)


def make_cut(name: str, **settings):
    from leantrain.cuts import REGISTRY

    cls = REGISTRY[name]
    return cls(cls.Config(**settings))


def initial_state(recipe: dict):
    """Model, data and task exactly as ``leantrain.train(recipe)`` builds them before training.

    ``train`` seeds everything and then builds tokenizer, data and model; doing the same
    here gives the untrained model (same random head) to compare a run against.
    """
    from leantrain.engine.run import as_recipe
    from leantrain.engine.session import load_hf_parts, seed_everything

    parsed = as_recipe(copy.deepcopy(recipe))
    seed_everything(parsed.train.seed)
    _tokenizer, data, model, task = load_hf_parts(parsed)
    return parsed, model, data, task


def base_param_name(name: str) -> str | None:
    """Map a PEFT-wrapped parameter name to the plain model's name; None for adapter/head copies."""
    if "lora_" in name or ".modules_to_save." in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def stored_tensors(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Copies of the plain tensors that really hold ``tensor``'s data: itself, or for a
    quantized subclass (torchao int8, NF4) its inner int data and scales. Comparing these
    bitwise is what ``torch.equal`` cannot do on the subclass itself."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return tuple(part for name in names for part in stored_tensors(getattr(tensor, name)))
    return (tensor.detach().clone(),)


def same_data(a: torch.Tensor | tuple, b: torch.Tensor | tuple) -> bool:
    """Bitwise equality of two tensors (plain or quantized) or of their ``stored_tensors``."""
    a = a if isinstance(a, tuple) else stored_tensors(a)
    b = b if isinstance(b, tuple) else stored_tensors(b)
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def stored_snapshot(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    """Each parameter's stored data (quantized ones included), for ``same_data`` after training."""
    return {n: stored_tensors(p) for n, p in model.named_parameters()}


# The library's own counter (deduplicated by storage), as the memory accountant uses it.
SavedTensorBytes = SavedTensorCounter


def initial_prepared(recipe: dict):
    """The model of ``train(recipe)`` before its first step (built, then prepared by the
    cuts) and its eval metrics: the untrained baseline of a run.

    Between seeding and the first step ``train`` draws random numbers only to build the
    model and in the cuts' ``prepare_model`` (e.g. LoRA's A matrices), in this order, so
    repeating it gives the same initial weights, parameter names and dtypes.
    """
    from leantrain.cuts import build_cuts
    from leantrain.data.batching import epoch_loader
    from leantrain.engine.context import RunContext

    parsed, model, data, task = initial_state(recipe)
    cuts = build_cuts(parsed)
    run = RunContext(device=CPU, train=parsed.train, eval_rows=len(data.eval))
    cuts.setup(run)
    model = cuts.prepare_model(model, run)
    was_training = model.training
    model.eval()
    loader = epoch_loader(data.eval, parsed.train.batch_size, data.collate, parsed.train.seed, 0, shuffle=False)
    metrics = task.evaluate(model, loader, lambda: cuts.forward_context(run), CPU)
    model.train(was_training)
    return model, metrics
