"""The live cost ledger: dollars, utilization and MFU of a run while it trains.

Why: a bill seen only afterwards cannot change anything. Every ``train`` line of
metrics.jsonl carries what the run has cost so far (price x train time x devices), the
projected total at the current pace, the achieved FLOP/s and MFU against the device's
peak, the share of paid time spent waiting for data ("ghost compute") and CPU/RAM (and
GPU, where NVML is present) utilization; summary.json carries the final figures.

FLOPs are counted with ``FlopCounterMode`` on the real model on the first optimizer step
of each epoch (and of a resumed process), and that step's FLOPs per sample are charged
to every sample until the next count: the work per sample can change between epochs
(a frozen prefix computed in the first epoch and read from a cache after it), while
batches within an epoch differ only in length, so MFU is approximate to that extent.
``flops_per_sample`` in the summary is the first count, the one the planner predicts. Like the memory accountant, the
ledger is a run instrument riding in the cut stack, not a recipe cut.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode

from leantrain.cuts.base import Cut


def device_peak_flops(device: torch.device, hardware_name: str, dtype: str) -> float | None:
    """Peak FLOP/s of one device in ``dtype``: calibrated on a CPU, from the catalog on a GPU."""
    from leantrain.plan.catalog import load_catalog
    from leantrain.plan.calibrate import cpu_peak_tflops

    if device.type == "cpu":
        peaks = cpu_peak_tflops()
        return peaks.get(dtype, peaks.get("fp32", 0.0)) * 1e12 or None
    if device.type != "cuda":
        return None
    catalog = load_catalog()
    acc = catalog.find(hardware_name) or _catalog_gpu(catalog, torch.cuda.get_device_name(device))
    return acc.peak_flops(dtype) if acc is not None else None


def _catalog_gpu(catalog, device_name: str):
    """The catalog entry whose name parts all appear in the CUDA device name
    ("A100-80GB" in "NVIDIA A100-SXM4-80GB"); the most specific match wins."""
    upper = device_name.upper()
    scored = [(len(parts), acc) for acc in catalog.accelerators.values() if acc.name != "cpu"
              for parts in [acc.name.upper().split("-")] if all(part in upper for part in parts)]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


class CostLedger(Cut):
    """Instrument: cost, projected cost, FLOP/s, MFU, data wait and utilization."""

    name = "cost_ledger"
    order = 110

    def __init__(self, price_per_hour: float, price_source: str, hardware_name: str = "cpu", dtype: str = "fp32"):
        super().__init__(config=None)
        self.price_per_hour, self.price_source = price_per_hour, price_source
        self.hardware_name, self.dtype = hardware_name, dtype
        self.flops_per_sample: float | None = None
        self.peak: float | None = None
        self._counter: FlopCounterMode | None = None
        self._samples_before = 0
        self.flops_done = 0.0  # FLOPs of all samples trained on, at each epoch's counted rate
        self._rate: float | None = None
        self._counted_epoch: int | None = None
        self._samples_charged = 0
        self._process = None

    @classmethod
    def for_recipe(cls, recipe) -> "CostLedger":
        from leantrain.plan.catalog import resolve_price

        price, source = resolve_price(recipe.hardware)
        precision = recipe.enabled_cuts().get("precision")
        return cls(price, source, recipe.hardware.name, precision.dtype if precision else "fp32")

    def setup(self, run) -> None:
        self.peak = device_peak_flops(run.device, self.hardware_name, self.dtype)

    def forward_context(self, run):
        # Count the FLOPs of each epoch's first training step (all its micro-batches,
        # forward and backward): start here, stop when its gradients are complete.
        # (Only a forward that will be trained on: not evaluation, not a no-grad check.)
        epoch = run.state.epoch
        if run.model.training and torch.is_grad_enabled() and self._counted_epoch != epoch and self._counter is None:
            self._samples_before, self._counted_epoch = run.state.samples_seen, epoch
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        return contextlib.nullcontext()

    def _stop_counting(self) -> float | None:
        if self._counter is None:
            return None
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        return float(counter.get_total_flops())

    def on_before_optimizer_step(self, optimizer, run) -> None:
        self._step_flops = self._stop_counting()

    def on_step_end(self, run) -> None:
        flops, seen = getattr(self, "_step_flops", None), run.state.samples_seen
        if flops is not None:
            samples = seen - self._samples_before
            self._rate = flops / samples if samples else self._rate
            if self.flops_per_sample is None:
                self.flops_per_sample = self._rate
            self._step_flops = None
        self.flops_done += (self._rate or 0.0) * (seen - self._samples_charged)
        self._samples_charged = seen

    def state_dict(self) -> dict:
        return {"flops_done": self.flops_done, "samples_charged": self._samples_charged}

    def load_state_dict(self, state: dict) -> None:
        self.flops_done = float(state.get("flops_done", 0.0))
        self._samples_charged = int(state.get("samples_charged", 0))

    def on_fit_end(self, run) -> bool:
        self._stop_counting()  # a run stopped mid-step must not leave the counter active
        return False

    def figures(self, run) -> dict:
        """The ledger's figures for the run so far."""
        state = run.state
        seconds = state.train_seconds
        devices = run.world_size  # every device is billed
        cost = self.price_per_hour * devices * seconds / 3600
        projected = cost / state.step * max(run.total_steps, state.step) if state.step else 0.0
        out = {
            "cost_usd": round(cost, 6), "projected_cost_usd": round(projected, 6),
            "price_per_hour": self.price_per_hour, "devices": devices,
            "data_wait_fraction": round(state.data_wait_seconds / seconds, 4) if seconds else 0.0,
        }
        if self.flops_done and seconds:
            achieved = self.flops_done / seconds
            out["achieved_flops_per_second"] = round(achieved)
            out["mfu"] = round(achieved / (self.peak * devices), 5) if self.peak else None
        return out

    def utilization(self) -> dict:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only starts the measurement
        out = {"cpu_percent": self._process.cpu_percent(None), "ram_used_bytes": self._process.memory_info().rss,
               "ram_percent": psutil.virtual_memory().percent}
        out.update(_gpu_utilization())
        return out

    def annotate(self, event: dict, run) -> dict:
        """``event`` with the ledger's figures added, for train lines of metrics.jsonl."""
        if event.get("event") != "train":
            return event
        return {**event, **self.figures(run), **self.utilization()}

    def summary_fields(self, run) -> dict:
        return {**self.figures(run), "price_source": self.price_source,
                "flops_per_sample": round(self.flops_per_sample) if self.flops_per_sample else None,
                "flops_counted": round(self.flops_done),
                "peak_flops_per_device": self.peak}


def _gpu_utilization() -> dict:
    """GPU busy % and memory from NVML when the pynvml package and a GPU are present."""
    if not torch.cuda.is_available():
        return {}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return {"gpu_percent": rates.gpu, "gpu_memory_percent": rates.memory}
    except Exception:  # NVML missing or unsupported: utilization is optional telemetry
        return {}


def find_ledger(cuts) -> CostLedger | None:
    return next((c for c in cuts if isinstance(c, CostLedger)), None)
