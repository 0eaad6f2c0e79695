"""Evaluation answers held-out prompts in left-padded batches (one at a time was most of an
LLM demo evaluation on CPU); the replies must be exactly those of one-at-a-time decoding,
including rows that finish early while the rest of their batch goes on."""
from __future__ import annotations

import random

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from leantrain.engine.chat_eval import greedy_replies


def test_batched_replies_equal_one_at_a_time_and_stop_at_the_end_token(tiny_chat_llama_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_chat_llama_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 5000) for _ in range(rng.randint(3, 20))] for _ in range(7)]
    # The end token: what the first prompt generates first, so that row ends at once (empty
    # reply) while longer rows of its batch keep going and are padded after it.
    first = model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=1, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)[0, -1].item()
    model.generation_config.eos_token_id = first
    with torch.no_grad():
        alone = [greedy_replies(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
        batched = greedy_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert alone[0] == "" and any(alone[1:])
    assert batched == alone
