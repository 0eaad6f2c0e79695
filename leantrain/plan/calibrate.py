"""Peak matmul throughput of this machine's CPU, measured once and cached.

Why measure: CPU datasheets do not state a training-relevant peak (it depends on the
core count, AVX-512/AMX support and the BLAS torch ships), and this is the denominator
of MFU and of the planner's CPU hours. A square matmul per dtype, timed for a fraction
of a second after a warm-up, is what a transformer step spends most of its time in.
The result is cached per (CPU model, thread count, torch version), so the cost is paid
once per machine.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from leantrain.caches import cache_home

CALIBRATION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cache_dir() -> Path:
    return cache_home("calibration")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    return f"{_cpu_model()} | threads={torch.get_num_threads()} | torch={torch.__version__}"


def measure_matmul_tflops(dtype: torch.dtype, size: int = 1024, seconds: float = 0.25) -> float:
    """Achieved TFLOP/s of ``size``-square matmuls in ``dtype``, timed for about ``seconds``."""
    # A private generator: calibrating inside a run must not advance the global RNG
    # (that would change the run's dropout masks, and a resumed run would diverge).
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, BLAS kernel selection
    # The best of several short windows: other processes on a shared machine only ever
    # slow a window down, so the fastest one is closest to what the CPU can do.
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        runs, started = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - started < seconds / 5:
            torch.mm(a, b)
            runs += 1
        best = max(best, 2 * size**3 * runs / (time.perf_counter() - started) / 1e12)
        if time.perf_counter() >= deadline:
            return best


def cpu_peak_tflops(refresh: bool = False, size: int = 1024, seconds: float = 0.25) -> dict[str, float]:
    """{dtype: TFLOP/s} for fp32 and bf16 on this CPU, from the cache when measured before."""
    path = cache_dir() / "cpu_peak.json"
    key = machine_key()
    cached: dict = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = {}
    if not refresh and isinstance(cached.get(key), dict):
        return {k: float(v) for k, v in cached[key].items()}
    measured = {name: float(f"{measure_matmul_tflops(dtype, size, seconds):.4g}") for name, dtype in CALIBRATION_DTYPES.items()}
    cached[key] = measured
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cached, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return measured
