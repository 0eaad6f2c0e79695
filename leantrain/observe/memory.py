"""Peak memory of a run, and how it was measured (the method matters to the reader).

On CUDA the caching allocator's high-water mark is exact for tensors. On CPU there is no
allocator counter, so we report the process's peak resident set size: it includes the
Python interpreter and libraries (a fixed few hundred MB), so differences between runs
are meaningful while the absolute figure overstates what the tensors needed.
"""
from __future__ import annotations

import resource
import sys

import torch


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, method) for the peak since the last reset (CUDA) or process start (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return int(peak if sys.platform == "darwin" else peak * 1024), "process peak RSS (getrusage ru_maxrss)"
