"""Peak memory of a run, and how it was measured (the method matters to the reader).

On CUDA the caching allocator's high-water mark is exact for tensors. On CPU there is no
allocator counter; the process's peak resident set size includes the interpreter and
libraries (several hundred MB), which hides what the cuts change, so the tensor
accounting of the training steps is reported as the peak and RSS alongside it.
"""
from __future__ import annotations

import resource
import sys

import torch


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_memory(device: torch.device, extras: dict | None = None) -> tuple[int, str]:
    """(bytes, method): the allocator's peak on CUDA; on CPU the tensor accounting of the
    training steps when they ran (see observe/accountant.py), else the process peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    breakdown = (extras or {}).get("memory_breakdown")
    if breakdown:
        return int(breakdown["total"]), "tensor accounting: weights + gradients + optimizer states + largest saved activations of any step"
    return peak_rss_bytes(), "process peak RSS (getrusage ru_maxrss)"
