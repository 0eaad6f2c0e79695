"""Published, measured peak memory of 7-8B LLM fine-tuning vs what `leantrain plan` predicts.

Why: the planner's accuracy was checked against leantrain's own CPU runs (planner_accuracy.py),
which share its accountant; that says nothing about the figures people actually meet on GPUs.
Here each row is a peak someone else measured and published (torchtune, LitGPT, PEFT), with
its settings and its meter, next to the planner's prediction for the nearest recipe leantrain
can express, built from the model's config.json alone (bench/llm_configs/, no weights, no
tokenizer) as a chat recipe (`data.format: messages`, packed where the source packed).

Three figures per row, because the sources measure different things:

* plan peak: `peak_memory_bytes`, what `leantrain plan` prints (tensors + the catalog's
  `overhead_gb`, 0.8 GB of CUDA context, cuBLAS workspace and allocator slack);
* plan, allocated: the same minus that overhead, i.e. the bytes of live tensors at the
  peak, what `torch.cuda.max_memory_allocated` (the meter of every source here) reports;
* like-for-like: allocated minus the state the source's run kept off the PyTorch allocator
  and leantrain cannot (an optimizer stepping inside backward frees each gradient at once;
  bitsandbytes paged optimizers keep their states in CUDA managed memory, which the
  allocator's counters never see). Only rows with such settings have it.

    python bench/plan_published.py        # table on stdout, JSON to bench/results/plan_published.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "bench" / "llm_configs"
GIB, GB = 2**30, 1e9

SOURCES = {
    "tt-2409": {"name": "torchtune README, 'Memory and training speed'",
                "where": "github.com/pytorch/torchtune README.md @ 30b8519e8 (2024-09-24, PR #1664); configs "
                         "recipes/configs/llama3_1/8B_{full,lora,qlora}_single_device.yaml at that commit",
                "meter": "torchtune's get_memory_stats (peak active / allocated / reserved of the PyTorch allocator, "
                         "in GiB); the README does not say which of the three",
                "unit": "GiB"},
    "tt-2405": {"name": "torchtune README, recipe table",
                "where": "github.com/pytorch/torchtune README.md @ 0217d44c2 (2024-05-09, PR #955); configs "
                         "recipes/configs/llama2/7B_{lora,qlora}_single_device.yaml, 7B_full_low_memory.yaml",
                "meter": "torchtune's get_memory_stats, GB = 1e9 bytes (torchtune/utils/memory.py at that commit); "
                         "which of active / allocated / reserved not stated",
                "unit": "GB"},
    "tt-961": {"name": "torchtune PR #961 (re-measurement by a maintainer, not merged)",
               "where": "github.com/pytorch/torchtune/pull/961 (2024-05-10)",
               "meter": "peak memory allocated (\"and similar for reserved\"), GB = 1e9 bytes", "unit": "GB"},
    "litgpt": {"name": "LitGPT config_hub/finetune/README.md",
               "where": "github.com/Lightning-AI/litgpt config_hub/finetune/README.md @ 00af8b0d (2024-09-27); "
                        "configs config_hub/finetune/<model>/{lora,qlora}.yaml at that commit",
               "meter": "torch.cuda.max_memory_allocated() / 1e9 (litgpt/finetune/lora.py prints 'Memory used')",
               "unit": "GB"},
    "peft": {"name": "PEFT README, 'GPU memory required for adapting LLMs'",
             "where": "github.com/huggingface/peft README.md @ 73d7224b5 (2022-12-30); script "
                      "examples/causal_language_modeling/pet_lora_clm_accelerate_ds_zero3_offload.py at that commit",
             "meter": "TorchTracemalloc: torch.cuda.max_memory_allocated() per epoch, printed in MiB (2^20), "
                      "rounded to '32GB' in the README (read here as GiB)",
             "unit": "GiB"},
}

ATTN = ["q_proj", "v_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BF16 = {"dtype": "bf16", "frozen_dtype": "bf16"}
TT_LOSS = "chunked cross-entropy (8 chunks; leantrain upcasts the full-vocab logits to fp32)"
LIT_LOSS = "chunked lm_head (128 tokens) and chunked cross-entropy"
OFF_ALLOCATOR = ("gradients", "optimizer_states")


@dataclass
class Row:
    source: str
    model: str                 # folder under bench/llm_configs
    method: str
    published: float           # in the source's unit
    settings: str
    cuts: dict
    batch: int
    seq: int
    pack: bool = False
    gpu: str = "L4"            # catalog entry planned for: only its overhead_gb (0.8 GB, same for all GPUs) enters
    unmodeled: list[str] = field(default_factory=list)
    off_allocator: tuple[str, ...] = ()   # breakdown parts the source's run kept off the allocator


def _lora(r, alpha, dropout, targets=None):
    lora = {"r": r, "alpha": alpha, "dropout": dropout}
    return lora | ({"target_modules": targets} if targets else {})


TT_FULL_UNMODELED = ["bitsandbytes PagedAdamW8bit (paged 8-bit states)", "optimizer step fused into backward",
                     "torch.compile", TT_LOSS]
ROWS = [
    Row("tt-2409", "llama-3.1-8b", "full", 18.9, "1x RTX 4090, bs 2, packed 2048, bf16 weights, AC, PagedAdamW8bit, "
        "optimizer in backward, compile", {"gradient_checkpointing": True}, 2, 2048, True, "L4",
        TT_FULL_UNMODELED, OFF_ALLOCATOR),
    Row("tt-2409", "llama-3.1-8b", "LoRA", 16.2, "1x RTX 4090, bs 2, packed 2048, bf16, AC, r 8 / alpha 16 on q,v, "
        "dropout 0, fused AdamW, compile", {"lora": _lora(8, 16, 0.0, ATTN), "gradient_checkpointing": True,
                                            "precision": BF16}, 2, 2048, True, "L4",
        ["torch.compile", TT_LOSS, "bf16 adapters (leantrain: fp32)"]),
    Row("tt-2409", "llama-3.1-8b", "QLoRA", 7.4, "1x RTX 4090, bs 2, packed 2048, NF4 base (torchao), AC, r 8 / "
        "alpha 16 on q,k,v,o + MLP, dropout 0, compile", {"lora": _lora(8, 16, 0.0, ALL_LINEAR), "quantized_base": 4,
                                                           "gradient_checkpointing": True, "precision": BF16},
        2, 2048, True, "L4", ["torch.compile", TT_LOSS, "bf16 adapters (leantrain: fp32)"]),
    Row("tt-2405", "llama-2-7b", "QLoRA", 12.3, "1x RTX 4090, bs 4, seq 2048, NF4 base, AC, r 8 / alpha 16 on "
        "q,k,v,o + MLP, dropout 0.05, AdamW, compile", {"lora": _lora(8, 16, 0.05, ALL_LINEAR), "quantized_base": 4,
                                                         "gradient_checkpointing": True, "precision": BF16},
        4, 2048, False, "L4", ["torch.compile", "bf16 adapters (leantrain: fp32)"]),
    Row("tt-2405", "llama-2-7b", "LoRA", 21.3, "1x RTX 4090, bs 4, seq 2048, bf16, AC, r 8 / alpha 16 on q,v, "
        "dropout 0.05, AdamW", {"lora": _lora(8, 16, 0.05, ATTN), "gradient_checkpointing": True, "precision": BF16},
        4, 2048, False, "L4", ["bf16 adapters (leantrain: fp32)"]),
    Row("tt-2405", "llama-2-7b", "full", 24.1, "1x RTX 4090, bs 4, seq 2048, bf16 weights, AC, bitsandbytes "
        "PagedAdamW, optimizer in backward", {"gradient_checkpointing": True}, 4, 2048, False, "L4",
        ["bitsandbytes PagedAdamW (paged 32-bit states)", "optimizer step fused into backward",
         "fp16 weights here (the config's dtype; same bytes as torchtune's bf16)"], OFF_ALLOCATOR),
    Row("tt-961", "llama-2-7b", "full", 20.2, "as the row above, every input forced to 2048 tokens",
        {"gradient_checkpointing": True}, 4, 2048, False, "L4",
        ["bitsandbytes PagedAdamW (paged 32-bit states)", "optimizer step fused into backward",
         "fp16 weights here (same bytes)"], OFF_ALLOCATOR),
]
LIT_SETTINGS = "1x A10G, Alpaca2k, longest batch taken as max_seq_length 512, bf16-true, no AC, AdamW, r 32 / alpha 16 on q,v, dropout 0.05"
LIT_UNMODELED = [LIT_LOSS, "bf16-true adapters and AdamW states (leantrain: fp32)"]
for model, lora_gb, lora_batch, qlora_gb in (("llama-2-7b", 19.77, 2, 13.68), ("llama-3.1-8b", 19.73, 1, 17.41),
                                             ("mistral-7b-v0.1", 20.66, 2, 14.29)):
    lora = _lora(32, 16, 0.05, ATTN)
    ROWS.append(Row("litgpt", model, "LoRA", lora_gb, f"mb {lora_batch}; " + LIT_SETTINGS,
                    {"lora": lora, "precision": BF16}, lora_batch, 512, gpu="A10G", unmodeled=LIT_UNMODELED))
    ROWS.append(Row("litgpt", model, "QLoRA", qlora_gb, "mb 2; bnb.nf4 base; " + LIT_SETTINGS,
                    {"lora": lora, "quantized_base": 4, "precision": BF16}, 2, 512, gpu="A10G",
                    unmodeled=LIT_UNMODELED + ["bitsandbytes NF4 (fp32 absmax per 64 weights; planned as torchao NF4)"]))
ROWS.append(Row("peft", "bloomz-7b1", "LoRA", 32.0, "1x A100 80GB, bs 8, padded to 64 tokens, fp32 weights, no AC, "
                "AdamW, r 8 / alpha 32 on query_key_value, dropout 0.1", {"lora": _lora(8, 32, 0.1)}, 8, 64,
                gpu="A100-80GB", unmodeled=["config.json assembled from BLOOM's keys with 7b1 sizes (no torch_dtype: fp32)"]))


def chat_data(root: Path) -> Path:
    """A two-conversation messages file: the recipes are chat recipes, and with no tokenizer
    next to config.json the planner falls back to data.max_length for every row."""
    path = root / "chat.jsonl"
    turns = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    path.write_text("".join(json.dumps({"messages": t}) + "\n" for t in turns), encoding="utf-8")
    return path


def recipe_for(row: Row, data: Path):
    from leantrain.recipe import parse_recipe

    return parse_recipe({
        "model": {"name_or_path": str(CONFIGS / row.model), "task": "causal-lm"},
        "data": {"train": str(data), "format": "messages", "max_length": row.seq, "pack": row.pack},
        "cuts": row.cuts, "train": {"batch_size": row.batch}, "hardware": {"name": row.gpu},
    })


def predict(row: Row, data: Path) -> dict:
    from leantrain.plan.planner import plan

    start = time.perf_counter()
    p = plan(recipe_for(row, data), gpus=[row.gpu], recommend=False)
    memory = p["memory_breakdown"]
    allocated = memory["total"] - memory["framework_overhead"]
    published = row.published * (GIB if SOURCES[row.source]["unit"] == "GiB" else GB)
    like = allocated - sum(memory[k] for k in row.off_allocator) if row.off_allocator else None
    error = lambda predicted: None if predicted is None else predicted / published - 1  # noqa: E731
    return {"source": row.source, "model": row.model, "method": row.method, "settings": row.settings,
            "published": row.published, "unit": SOURCES[row.source]["unit"], "published_bytes": int(published),
            "plan_peak_bytes": memory["total"], "plan_allocated_bytes": allocated, "like_for_like_bytes": like,
            "error_allocated": error(allocated), "error_like_for_like": error(like),
            "off_allocator": list(row.off_allocator), "unmodeled": row.unmodeled,
            "breakdown": memory, "setup": p["setup"], "seq_len": p["seq_len"], "notes": p["notes"],
            "seconds": round(time.perf_counter() - start, 1)}


def _gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:+.0%}"


def table(results: list[dict]) -> str:
    lines = ["| # | model | method | settings | published | source | plan peak GiB | plan allocated GiB | error | "
             "like-for-like GiB | error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        published = f"{r['published']} {r['unit']} ({r['published_bytes'] / GIB:.2f} GiB)"
        lines.append(f"| {i} | {r['model']} | {r['method']} | {r['settings']} | {published} | {r['source']} | "
                     f"{_gib(r['plan_peak_bytes'])} | {_gib(r['plan_allocated_bytes'])} | {_pct(r['error_allocated'])} | "
                     f"{_gib(r['like_for_like_bytes'])} | {_pct(r['error_like_for_like'])} |")
    return "\n".join(lines)


def breakdown_table(results: list[dict]) -> str:
    parts = ("weights", "gradients", "optimizer_states", "saved_activations", "temporaries")
    lines = ["| # | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    for i, r in enumerate(results, 1):
        lines.append(f"| {i} | " + " | ".join(_gib(r["breakdown"][k]) for k in parts) + " |")
    return "\n".join(lines)


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = chat_data(Path(tmp))
        results = []
        for row in ROWS:
            results.append(predict(row, data))
            print(f"{row.model} {row.method} ({row.source}): {results[-1]['seconds']} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    print(table(results))
    print()
    print(breakdown_table(results))
    print(f"\n{len(results)} rows planned in {elapsed:.0f} s")
    out = ROOT / "bench" / "results" / "plan_published.json"
    out.write_text(json.dumps({"sources": SOURCES, "rows": results, "seconds": round(elapsed, 1)}, indent=2) + "\n",
                   encoding="utf-8")


if __name__ == "__main__":
    main()
