"""Evaluation of chat runs: besides loss and perplexity, what the model actually answers.

Perplexity says the model finds the reference answers likelier; it does not say the
answer it gives is right. So at each evaluation the first ``data.chat.eval_generate``
held-out conversations are answered by greedy decoding from the prompt of their last
assistant turn (everything before it, as the template renders it), compared with the
reference turn, and written to ``RUN_DIR/samples.jsonl``. ``exact_match`` (case, spaces
and end punctuation ignored) and ``contains`` (the reference inside the answer) join the
eval metrics, so early stopping, ``ablate --to-metric`` and ``tune --target`` can use them.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from leantrain.data.packing import IGNORE_INDEX
from leantrain.engine.tasks import CausalLMTask


def last_answer(example: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of an example's last assistant turn: the last run of target
    tokens in its labels, and everything before it."""
    labels = list(example["labels"])
    end = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    ids = list(example["input_ids"])
    return ids[:start], ids[start:end]


def greedy_reply(model, tokenizer, prompt: list[int], max_new_tokens: int) -> str:
    """The model's greedy continuation of the token ids ``prompt``, as text (special tokens,
    the end-of-turn one included, left out). Shared by evaluation and ``leantrain predict``."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


class ChatTask(CausalLMTask):
    """Causal LM on chat data, with generated answers scored at every evaluation."""

    def __init__(self, tokenizer, eval_examples, count: int, max_new_tokens: int, samples_path: Path):
        self.tokenizer, self.max_new_tokens, self.samples_path = tokenizer, max_new_tokens, Path(samples_path)
        self.prompts = [last_answer(ex) for ex in list(eval_examples)[:count]]
        self.evaluations = 0

    @torch.no_grad()
    def evaluate(self, model, batches, forward_context, device) -> dict[str, float]:
        metrics = super().evaluate(model, batches, forward_context, device)
        if not self.prompts:
            return metrics
        tokenizer, records = self.tokenizer, []
        self.evaluations += 1
        for prompt, answer in self.prompts:
            with forward_context():
                reply = greedy_reply(model, tokenizer, prompt, self.max_new_tokens)
            reference = tokenizer.decode(answer, skip_special_tokens=True).strip()
            records.append({"evaluation": self.evaluations, "prompt": tokenizer.decode(prompt, skip_special_tokens=False), "reference": reference,
                            "reply": reply, "exact_match": normalise(reply) == normalise(reference),
                            "contains": normalise(reference) in normalise(reply)})
        metrics["exact_match"] = sum(r["exact_match"] for r in records) / len(records)
        metrics["contains"] = sum(r["contains"] for r in records) / len(records)
        self.samples_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return metrics
