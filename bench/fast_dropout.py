"""Dropout kernels side by side: torch's native CPU dropout vs ``cuts.fast_dropout``.

Shapes are the demo's (batch 16, ~40 tokens, hidden 384, 12 heads) plus a longer row;
forward + backward, best of several repeats, one torch thread. Prints a table and
writes bench/results/fast_dropout.json.

    python bench/fast_dropout.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from leantrain.cuts.fast_dropout import fast_dropout  # noqa: E402

SHAPES = [("hidden, fp32 (LoRA input, embeddings)", (16, 40, 384), torch.float32),
          ("hidden, bf16 (after a bf16 linear)", (16, 40, 384), torch.bfloat16),
          ("attention probabilities, bf16", (16, 12, 40, 40), torch.bfloat16),
          ("hidden, fp32, 128 tokens", (16, 128, 384), torch.float32)]


def best_ms(fn, repeats: int = 7, calls: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls * 1e3)
    return best


def forward_backward(dropout, x: torch.Tensor):
    def step():
        leaf = x.detach().requires_grad_()
        dropout(leaf).sum().backward()
    return step


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for label, shape, dtype in SHAPES:
        x = torch.randn(shape, dtype=dtype)
        native = best_ms(forward_backward(lambda t: torch.nn.functional.dropout(t, 0.1, True), x))
        fast = best_ms(forward_backward(lambda t: fast_dropout(t, 0.1), x))
        rows.append({"tensor": label, "shape": list(shape), "native_ms": round(native, 3), "fast_ms": round(fast, 3),
                     "speedup": round(native / fast, 2)})
    print("| tensor | shape | native ms | fast ms | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tensor']} | {'x'.join(map(str, r['shape']))} | {r['native_ms']} | {r['fast_ms']} | {r['speedup']}x |")
    out = REPO / "bench" / "results" / "fast_dropout.json"
    out.write_text(json.dumps({"p": 0.1, "threads": 1, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
