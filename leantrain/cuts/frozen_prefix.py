"""Frozen prefix: freeze the embeddings and the lowest N blocks, and compute their output
for each example once.

Why: when only the top of a network trains, the bottom is a fixed function of the
input. Every epoch after the first recomputes the same activations, and backward runs
through blocks that learn nothing. With the prefix's output cached per example, a step
costs only the trainable top blocks, forward and backward; the same cache serves every
evaluation of the same eval set. It is the feature-extraction end of fine-tuning, and the
dial (``blocks``) sets how much of the network still adapts.

What changes: the prefix runs in eval mode (no dropout), so its output is a pure
function of the tokens; cached rows are keyed by their tokens (and token types), so any
order, batching or padding of the same examples hits the cache. Nothing below block N
may train: the cut freezes it and says so, including adapters that LoRA put there (train
them with ``lora.layers``). Checkpoints hold no cache: a resumed run recomputes the
same values on demand.
"""
from __future__ import annotations

import contextlib
import inspect

import torch
from pydantic import Field
from torch import nn

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

KEY = "cuts.frozen_prefix"


class FrozenPrefixSettings(CutConfig):
    shorthand_field = "blocks"
    blocks: int = Field(4, ge=1, description="How many of the lowest transformer blocks (with the embeddings) are frozen and cached.")
    max_cache_mb: float = Field(4096, gt=0, description="Cap on the cache's memory; rows beyond it are recomputed every time they are seen.")
    store_dtype: str = Field("auto", pattern="^(auto|bf16|fp32)$",
                             description="Dtype of cached rows: `auto` keeps what the prefix computed; `bf16` halves the cache (values then round).")


class PrefixCache:
    """Per-example prefix outputs, keyed by the example's tokens."""

    def __init__(self, limit_bytes: float, dtype: torch.dtype | None):
        self.rows: dict[bytes, torch.Tensor] = {}
        self.limit_bytes, self.dtype = limit_bytes, dtype
        self.bytes = self.hits = self.misses = 0
        self.computed_dtype: torch.dtype | None = None  # what the prefix outputs; cached rows are widened back to it

    @staticmethod
    def keys(input_ids: torch.Tensor, mask: torch.Tensor, token_types: torch.Tensor | None) -> list[bytes]:
        # The tokens are needed on the host to key the rows: one small copy per batch (a
        # sync on CUDA), against a prefix forward saved on every hit.
        ids = input_ids.cpu()
        types = token_types.cpu() if token_types is not None else None
        keep = mask.cpu().bool()
        return [ids[i][keep[i]].numpy().tobytes() + (types[i][keep[i]].numpy().tobytes() if types is not None else b"")
                for i in range(ids.shape[0])]

    def store(self, key: bytes, row: torch.Tensor) -> None:
        self.computed_dtype = row.dtype
        if key in self.rows:  # the same example twice in one batch
            return
        with torch.inference_mode(False):  # a row first seen under inference mode must still serve training
            row = row.detach().to(self.dtype or row.dtype).clone()
        size = row.numel() * row.element_size()
        if self.bytes + size <= self.limit_bytes:
            self.rows[key] = row
            self.bytes += size


class PrefixRunner:
    """Runs a Hugging Face backbone with its prefix blocks taken from a PrefixCache."""

    def __init__(self, model: nn.Module, blocks: int, cache: PrefixCache):
        from leantrain.compress.structure import block_list, unwrap

        plain = unwrap(model)
        self.backbone = getattr(plain, "base_model", plain)
        self.parent, self.attr, self.blocks = block_list(plain)
        if blocks >= len(self.blocks):
            raise UserError(f"{KEY}.blocks: {blocks} leaves no block to train; the model has {len(self.blocks)}, allowed 1..{len(self.blocks) - 1}")
        self.n, self.cache = blocks, cache
        self.embed_name = self._embedding_child()
        self.original_forward = self.backbone.forward
        self.signature = inspect.signature(self.original_forward)

    def _embedding_child(self) -> str:
        """The backbone child that turns tokens into the first block's input."""
        embedding = self.backbone.get_input_embeddings()
        for name, child in self.backbone.named_children():
            if child is embedding or any(m is embedding for m in child.modules()):
                return name
        raise UserError(f"{KEY}: cannot find the embedding module of {type(self.backbone).__name__}")

    def prefix_modules(self) -> list[nn.Module]:
        return [getattr(self.backbone, self.embed_name), *self.blocks[: self.n]]

    @contextlib.contextmanager
    def swapped(self, blocks: nn.ModuleList, embedding: nn.Module | None = None):
        """Run the backbone over only ``blocks`` (and a replaced embedding module)."""
        saved_blocks, saved_embedding = getattr(self.parent, self.attr), getattr(self.backbone, self.embed_name)
        setattr(self.parent, self.attr, blocks)
        if embedding is not None:
            setattr(self.backbone, self.embed_name, embedding)
        try:
            yield
        finally:
            setattr(self.parent, self.attr, saved_blocks)
            setattr(self.backbone, self.embed_name, saved_embedding)

    def compute(self, named: dict) -> torch.Tensor:
        """The prefix's output for a batch: embeddings and the lowest blocks, in eval mode."""
        captured = []
        handle = self.blocks[self.n - 1].register_forward_hook(lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out))
        modes = [(m, m.training) for m in self.prefix_modules()]
        try:
            for module, _ in modes:
                module.eval()
            with torch.no_grad(), self.swapped(nn.ModuleList(self.blocks[: self.n])):
                self.original_forward(**named)
        finally:
            handle.remove()
            for module, mode in modes:
                module.train(mode)
        return captured[0]

    def prefix_states(self, named: dict) -> torch.Tensor:
        """The batch's prefix output, from the cache where possible (misses computed together)."""
        input_ids, mask = named["input_ids"], named.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        keys = PrefixCache.keys(input_ids, mask, named.get("token_type_ids"))
        missing = [i for i, key in enumerate(keys) if key not in self.cache.rows]
        self.cache.hits += len(keys) - len(missing)
        self.cache.misses += len(missing)
        fresh = None
        if missing:
            index = torch.tensor(missing, device=input_ids.device)
            sub = {k: (v.index_select(0, index) if torch.is_tensor(v) and v.shape[:1] == input_ids.shape[:1] else v) for k, v in named.items()}
            fresh = self.compute(sub)
        width = (fresh if fresh is not None else self.cache.rows[keys[0]]).shape[-1]
        dtype = fresh.dtype if fresh is not None else self.cache.computed_dtype
        keep = mask.bool()
        position = {i: j for j, i in enumerate(missing)}
        rows = []
        for i, key in enumerate(keys):
            if i in position:
                self.cache.store(key, fresh[position[i]][keep[i]])
                rows.append(fresh[position[i]][keep[i]])
            else:
                rows.append(self.cache.rows[key].to(device=input_ids.device, dtype=dtype))
        out = torch.zeros(*input_ids.shape, width, dtype=dtype, device=input_ids.device)
        out[keep] = torch.cat(rows)  # the real tokens, row by row, in the mask's order
        return out

    def forward(self, *args, **kwargs):
        """The backbone's forward with the prefix replaced by cached rows."""
        bound = self.signature.bind(*args, **kwargs)
        named = {k: v for k, v in bound.arguments.items() if k != "kwargs"}
        named.update(bound.arguments.get("kwargs", {}))
        decoding = named.get("past_key_values") is not None or named.get("use_cache") is True
        if named.get("input_ids") is None or named.get("inputs_embeds") is not None or decoding:
            # Embeddings given directly, or generation (its KV cache must hold the prefix
            # blocks' keys too): the model's own forward, whole.
            return self.original_forward(*args, **kwargs)
        if named.get("position_ids") is not None:
            raise UserError(f"{KEY}: batches with position_ids (data.pack) are not supported; turn one of them off")
        states = self.prefix_states(named)
        with self.swapped(nn.ModuleList(self.blocks[self.n:]), _Precomputed(states)):
            return self.original_forward(*args, **kwargs)


def install(model: nn.Module, blocks: int, limit_bytes: float = 4 * 2**30, store_dtype: str = "auto") -> tuple[PrefixRunner, list[str]]:
    """Freeze the prefix of ``model`` and route its backbone through a prefix cache.
    Returns the runner and the names of prefix tensors that were trainable until now."""
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}[store_dtype]
    runner = PrefixRunner(model, blocks, PrefixCache(limit_bytes, dtype))
    thawed = sorted({name for module in runner.prefix_modules() for name, p in module.named_parameters() if p.requires_grad})
    for module in runner.prefix_modules():
        module.requires_grad_(False)
    runner.backbone.forward = runner.forward
    return runner, thawed


class _Precomputed(nn.Module):
    """Stands in for the embedding module: returns the prefix's output for this batch."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.states


@register
class FrozenPrefix(Cut):
    name = "frozen_prefix"
    Config = FrozenPrefixSettings
    summary = "Freeze the embeddings and lowest blocks; compute their output once per example and reuse it."
    order = 12  # after LoRA (10) wraps the model, before checkpointing (20) and precision (30)
    conflicts = {
        "fsdp": "the cached prefix swaps blocks in and out of the module tree, which FSDP's sharded units cannot follow",
        "prune": "pruning the frozen prefix would change outputs that are cached",
        "qat": "fake quantization in the prefix would change outputs that are cached",
        "distill": "the student's prefix would be cached while hidden states are matched to the teacher's",
    }

    def prepare_model(self, model: nn.Module, run) -> nn.Module:
        cfg = self.config
        self.runner, thawed = install(model, cfg.blocks, cfg.max_cache_mb * 2**20, cfg.store_dtype)
        if thawed:
            run.log({"event": "note", "cut": self.name,
                     "message": f"froze {len(thawed)} trainable tensors in the prefix (e.g. {thawed[0]}); "
                                "with LoRA, `lora.layers` puts adapters only on the blocks that train"})
        return model

    def on_fit_end(self, run) -> bool:
        cache = self.runner.cache
        run.log({"event": "note", "cut": self.name, "rows": len(cache.rows), "hits": cache.hits, "misses": cache.misses,
                 "message": f"prefix cache: {len(cache.rows)} rows, {cache.bytes / 2**20:.1f} MiB, {cache.hits} hits, {cache.misses} misses"})
        return False
