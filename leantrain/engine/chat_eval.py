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


GENERATE_BATCH = 16


def greedy_replies(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
                   batch_size: int = GENERATE_BATCH) -> list[str]:
    """The model's greedy continuations of the token-id lists ``prompts``, as text (special
    tokens, the end-of-turn one included, left out), in the order given.

    Batched because one prompt at a time is overhead-bound on a CPU: that way the LLM demo's
    first evaluation (48 questions) ended 78 s into the run, batched 28 s. Prompts of similar length share a batch, left-padded
    with the padding masked, so the replies match one-at-a-time decoding (tests prove it)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else pad
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
        for row, i in enumerate(chunk):
            replies[i] = tokenizer.decode(_until_end(out[row, width:].tolist(), ends), skip_special_tokens=True).strip()
    return replies


def _until_end(tokens: list[int], ends: set[int]) -> list[int]:
    """Tokens up to the first end-of-sequence one: a finished row of a batch is filled with
    the pad id, which need not be a special token that decoding would skip."""
    return next((tokens[:position] for position, token in enumerate(tokens) if token in ends), tokens)


def greedy_reply(model, tokenizer, prompt: list[int], max_new_tokens: int) -> str:
    """One prompt's greedy reply: ``leantrain predict`` and the benchmarks' scoring."""
    return greedy_replies(model, tokenizer, [prompt], max_new_tokens)[0]


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
        with forward_context():
            replies = greedy_replies(model, tokenizer, [prompt for prompt, _ in self.prompts], self.max_new_tokens)
        for (prompt, answer), reply in zip(self.prompts, replies):
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
