"""DPO as a task: one preference pair is one example, its loss the DPO loss of the pair.

Why a task and not a trainer: the loop, the cuts (LoRA, precision, checkpointing,
accumulation, early stopping) and checkpoints then work for preference tuning unchanged;
only how a batch becomes per-example losses, and what evaluation reports, differ.

The frozen reference is the same model with its LoRA adapter disabled (PEFT's
``disable_adapter``), under ``torch.no_grad``: the base weights never train, so this is
exactly the model the adapter started from (PEFT starts the adapter at zero), and no
second copy is held. Hence the recipe needs ``cuts.lora``. A sequence's log-probability
is the sum over its response tokens. Logits are computed only at the positions that
predict a response token (transformers' ``logits_to_keep``): the vocabulary-wide
log-softmax over prompt positions was most of a step's time and memory on the tiny test
model (49k-token vocabulary, responses ~15% of each row). A model without that argument
is scored by the causal-LM task's per-row loss, negated.

From TRL: the batch layout and its collator (``DataCollatorForPreference``: chosen rows,
then rejected rows, with a completion mask) and the sigmoid loss, reward and metric
definitions of ``DPOTrainer._compute_loss``. TRL has that loss only inline in a trainer
method that also runs the forward passes through its fused LM head and logs through
``accelerate``, so the formula (one line) is written here and tests/chat/test_dpo.py
checks loss and gradients against a real ``DPOTrainer`` on the same model and batch.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from leantrain.data.preference import PREFERENCE
from leantrain.engine.tasks import IGNORE_INDEX, CausalLMTask
from leantrain.errors import RecipeError, UserError


def dpo_terms(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and the implicit rewards ``beta * (log pi - log pi_ref)``
    of chosen and rejected, as TRL defines them (loss_type "sigmoid", no label smoothing)."""
    chosen_rewards, rejected_rewards = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards.detach(), rejected_rewards.detach()


def check_recipe(recipe) -> None:
    """Refuse, before anything loads, the recipes DPO cannot run: one line naming the key."""
    if recipe.data.format != PREFERENCE:
        return
    where = f"{recipe.source or '<recipe>'}: "
    data, cuts = recipe.data, recipe.cuts
    if not cuts.lora.enabled:
        raise RecipeError(f"{where}cuts.lora: data.format: preference (DPO) needs cuts.lora: the frozen reference is the model "
                          "with its adapter disabled, so no second copy is held; enable cuts.lora")
    refused = {
        "cuts.distill": (cuts.distill.enabled, "adds a token-level distillation term that a preference pair does not have"),
        "data.pack": (data.pack, "DPO scores each pair's two rows side by side; packing is for causal-LM documents"),
        "data.chat.train_on_inputs": (data.chat.train_on_inputs, "DPO scores the responses only"),
        "data.chat.eval_generate": (data.chat.eval_generate > 0, "preference runs report reward accuracy and margin instead"),
    }
    for key, (on, why) in refused.items():
        if on:
            raise RecipeError(f"{where}{key}: not available with data.format: preference ({why})")


def _peft_model(model):
    """The PEFT model under a DDP wrapper (FSDP2 keeps the module itself)."""
    while not hasattr(model, "disable_adapter") and hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "disable_adapter"):
        raise UserError("data.format: preference needs a LoRA (PEFT) model: the reference is the model with its adapter disabled")
    return model


class PreferenceTask:
    """Sigmoid DPO on batches from ``PreferenceCollator``; the count is the number of pairs."""

    per_example = True

    def __init__(self, beta: float):
        self.beta = beta
        self.tokens = CausalLMTask()
        self.selects_logits: bool | None = None  # whether the model takes ``logits_to_keep`` (found on first use)

    def count(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    batch_size = count

    def sequence_logps(self, model, batch: dict) -> torch.Tensor:
        """Summed log-probability of each row's completion tokens (prompt and padding excluded)."""
        ids, completion = batch["input_ids"], batch["completion_mask"]
        labels = ids.masked_fill(completion == 0, IGNORE_INDEX)
        inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"]}
        if self.selects_logits is None:
            forward = _peft_model(model).get_base_model().forward
            self.selects_logits = "logits_to_keep" in inspect.signature(forward).parameters
        if not self.selects_logits:
            return -self.tokens.example_losses(model, {**inputs, "labels": labels})
        # The positions whose next token is a response token in any row (one set for the batch).
        keep = completion[:, 1:].any(dim=0).nonzero().squeeze(1)
        logits = model(**inputs, logits_to_keep=keep).logits.float()
        targets = labels[:, keep + 1]
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        return -per_token.view(targets.shape).sum(dim=1)

    @contextmanager
    def reference(self, model):
        peft = _peft_model(model)
        with torch.no_grad(), peft.disable_adapter():
            yield peft

    def terms(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(losses, chosen rewards, rejected rewards), one entry per pair."""
        with self.reference(model) as reference:
            ref_chosen, ref_rejected = self.sequence_logps(reference, batch).chunk(2)
        chosen, rejected = self.sequence_logps(model, batch).chunk(2)
        return dpo_terms(chosen, rejected, ref_chosen, ref_rejected, self.beta)

    def example_losses(self, model, batch: dict) -> torch.Tensor:
        return self.terms(model, batch)[0]

    def loss_sum(self, model, batch: dict) -> torch.Tensor:
        return self.example_losses(model, batch).sum()

    @torch.no_grad()
    def evaluate(self, model, batches, forward_context, device) -> dict[str, float]:
        """Mean loss per pair; reward accuracy (share of pairs whose chosen reward is the
        higher: 0 at the start, where policy and reference agree), reward margin, and the
        mean rewards of each side (TRL's rewards/* metrics)."""
        from leantrain.engine.loop import move_to_device

        sums = {"loss": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0, "reward_chosen": 0.0, "reward_rejected": 0.0}
        n = 0
        for batch in batches:
            batch = move_to_device(batch, device)
            with forward_context():
                losses, chosen, rejected = self.terms(model, batch)
            for name, values in (("loss", losses), ("reward_accuracy", (chosen > rejected).float()),
                                 ("reward_margin", chosen - rejected), ("reward_chosen", chosen), ("reward_rejected", rejected)):
                sums[name] += values.float().sum().item()
            n += losses.shape[0]
        return {name: value / max(n, 1) for name, value in sums.items()}
