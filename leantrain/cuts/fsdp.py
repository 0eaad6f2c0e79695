"""FSDP: shard weights, gradients and optimizer states across the ranks of a torchrun job.

Why: with DistributedDataParallel every rank holds the whole model, its gradients and
its AdamW states (about 16 bytes per parameter in fp32), so the model size is capped by
one device. FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps 1/W of each on each of
W ranks and all-gathers a block's weights just before it runs (the next block's gather
overlaps the current block's compute), trading that traffic for memory.

Mechanics: this cut only tells the run to shard (``run.parallel``); the engine wraps the
prepared model with ``fully_shard`` per block (Hugging Face's ``_no_split_modules``) and
once at the root, syncs gradients on an accumulated step's last micro-batch only,
gathers the shards whole for checkpoints and the saved model, and loads a whole
checkpoint back into shards, so a run resumes on any number of ranks, with or without
FSDP. On one process there is nothing to shard and the cut does nothing.
"""
from __future__ import annotations

from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError


class FsdpSettings(CutConfig):
    reshard_after_forward: bool = Field(
        True, description="Free each block's gathered weights after its forward and gather them again for backward "
        "(least memory). False keeps them until backward: one all-gather less per block, more memory.")


@register
class Fsdp(Cut):
    name = "fsdp"
    Config = FsdpSettings
    summary = "Under torchrun, shard weights, gradients and optimizer states across ranks (FSDP2) instead of replicating them."
    order = 90

    def setup(self, run) -> None:
        run.parallel.shard = True
        run.parallel.reshard_after_forward = self.config.reshard_after_forward
        if not run.parallel.enabled:
            run.extras["fsdp"] = "one process: nothing to shard"

    def prepare_model(self, model, run):
        """Refuse, before any training, a run whose model could not be saved from shards:
        an adapter on a from_scratch model is saved with its random base, copied out of
        the whole model, which sharded parameters cannot give. Runs after the adapter cut
        (``order``), so the PEFT wrapper is visible here."""
        from_scratch = bool(getattr(run.model_section, "from_scratch", False))
        if run.parallel.enabled and from_scratch and hasattr(model, "peft_config"):
            raise UserError("cuts.fsdp: an adapter on a from_scratch model cannot be saved from shards; "
                            "train it without cuts.fsdp, or fine-tune a pretrained model")
        return model
