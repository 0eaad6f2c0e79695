"""The hardware and price catalog: what each accelerator can do and what an hour of it costs.

Why a data file: prices change every few months and differ per provider; keeping them in
``catalog.yaml`` (each row dated and sourced) lets a user check, override or extend them
with their own file without touching code. The ``cpu`` entry describes this machine: its
memory is read from the OS and its peak from a cached matmul calibration.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from leantrain.errors import UserError

BUILTIN = Path(__file__).with_name("catalog.yaml")
GB = 1e9


@dataclass
class PriceRow:
    accelerator: str
    provider: str
    region: str
    instance: str
    on_demand: float
    spot: float | None
    as_of: str
    source: str
    confidence: str = "list"

    def usd_per_hour(self, spot: bool = False) -> float:
        return self.spot if spot and self.spot is not None else self.on_demand


@dataclass
class Accelerator:
    name: str
    description: str
    memory_bytes: float | None
    peak_tflops: dict[str, float]
    bandwidth_gbps: float
    training_efficiency: float
    overhead_bytes: float
    source: str
    op_latency_us: float = 0.0     # fixed cost of one op (kernel launch, framework dispatch)
    async_launch: bool = True      # launches overlap compute (GPUs); on a CPU they add up
    intra_node_gbps: float = 16.0  # GB/s one device sends to its peers in a node (NVLink, PCIe)
    inter_node_gbps: float = 3.125  # GB/s a node's network carries to other nodes
    link_source: str = ""
    prices: list[PriceRow] = field(default_factory=list)

    def compute_dtype(self, wanted: str) -> str:
        """The dtype a step really runs in here: bf16 falls back to fp16 on pre-Ampere GPUs."""
        if wanted == "fp32" or wanted in self.peak_tflops:
            return wanted
        return "fp16" if "fp16" in self.peak_tflops else "fp32"

    def peak_flops(self, dtype: str) -> float:
        tflops = self.peak_tflops.get(self.compute_dtype(dtype)) or self.peak_tflops.get("fp32")
        if not tflops:
            raise UserError(f"catalog: accelerator {self.name!r} has no peak_tflops for {dtype} or fp32")
        return tflops * 1e12

    def cheapest(self, spot: bool = False) -> PriceRow | None:
        rows = [r for r in self.prices if not spot or r.spot is not None]
        return min(rows, key=lambda r: r.usd_per_hour(spot)) if rows else None


@dataclass
class Catalog:
    accelerators: dict[str, Accelerator]
    sources: list[str]

    def names(self) -> list[str]:
        return list(self.accelerators)

    def get(self, name: str) -> Accelerator:
        found = self.find(name)
        if found is None:
            raise UserError(f"unknown GPU {name!r}; the catalog has: {', '.join(self.names())}")
        return found

    def find(self, name: str) -> Accelerator | None:
        wanted = _normal(name)
        for key, acc in self.accelerators.items():
            if _normal(key) == wanted:
                return acc
        return None


def _normal(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"catalog file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(f"catalog file {path}: malformed ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not set(data) <= {"defaults", "accelerators", "prices"}:
        raise UserError(f"catalog file {path}: expected a mapping with keys defaults, accelerators, prices")
    return data


def _accelerator(name: str, raw: Any, defaults: dict, where: str) -> Accelerator:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: accelerators.{name} must be a mapping")
    if name != "cpu" and (not raw.get("memory_gb") or not raw.get("peak_tflops")):
        raise UserError(f"{where}: accelerators.{name} needs memory_gb and peak_tflops (e.g. {{fp32: 19.5, bf16: 312}})")
    memory = raw.get("memory_gb")
    return Accelerator(
        name=name,
        description=str(raw.get("description", name)),
        memory_bytes=float(memory) * GB if memory else None,
        peak_tflops={str(k): float(v) for k, v in (raw.get("peak_tflops") or {}).items()},
        bandwidth_gbps=float(raw.get("bandwidth_gbps") or 0),
        training_efficiency=float(raw.get("training_efficiency", defaults.get("training_efficiency", 0.35))),
        overhead_bytes=float(raw.get("overhead_gb", defaults.get("overhead_gb", 0))) * GB,
        source=str(raw.get("source", where)),
        op_latency_us=float(raw.get("op_latency_us", defaults.get("op_latency_us", 0))),
        async_launch=bool(raw.get("async_launch", defaults.get("async_launch", True))),
        intra_node_gbps=float(raw.get("intra_node_gbps", defaults.get("intra_node_gbps", 16))),
        inter_node_gbps=float(raw.get("inter_node_gbps", defaults.get("inter_node_gbps", 3.125))),
        link_source=str(raw.get("link_source", defaults.get("link_source", ""))),
    )


def _price(raw: Any, where: str) -> PriceRow:
    if not isinstance(raw, dict) or "accelerator" not in raw or "on_demand" not in raw:
        raise UserError(f"{where}: every prices row needs at least accelerator and on_demand (got {raw!r})")
    return PriceRow(
        accelerator=str(raw["accelerator"]), provider=str(raw.get("provider", "custom")),
        region=str(raw.get("region", "")), instance=str(raw.get("instance", "")),
        on_demand=float(raw["on_demand"]), spot=float(raw["spot"]) if raw.get("spot") is not None else None,
        as_of=str(raw.get("as_of", "unknown")), source=str(raw.get("source", where)),
        confidence=str(raw.get("confidence", "list")),
    )


def load_catalog(user_file: str | os.PathLike | None = None) -> Catalog:
    """The built-in catalog, extended or overridden by ``user_file`` (or $LEANTRAIN_CATALOG).

    A user accelerator replaces the built-in one of the same name; user price rows for an
    accelerator replace all built-in rows for it (your negotiated price is the price)."""
    user_file = user_file or os.environ.get("LEANTRAIN_CATALOG") or None
    return _load(str(user_file) if user_file else None)


@functools.lru_cache(maxsize=8)
def _load(user_file: str | None) -> Catalog:
    layers = [(BUILTIN, _read(BUILTIN))]
    if user_file:
        layers.append((Path(user_file), _read(Path(user_file))))
    accelerators: dict[str, Accelerator] = {}
    prices: dict[str, list[PriceRow]] = {}
    for path, data in layers:
        defaults = {**layers[0][1].get("defaults", {}), **(data.get("defaults") or {})}
        for name, raw in (data.get("accelerators") or {}).items():
            accelerators[str(name)] = _accelerator(str(name), raw, defaults, str(path))
        fresh: dict[str, list[PriceRow]] = {}
        for raw in data.get("prices") or []:
            row = _price(raw, str(path))
            fresh.setdefault(row.accelerator, []).append(row)
        prices.update(fresh)
    catalog = Catalog(accelerators, [str(p) for p, _ in layers])
    for name, rows in prices.items():
        acc = catalog.find(name)
        if acc is None:
            raise UserError(f"catalog: a price row names accelerator {name!r}, which is not listed; known: {', '.join(catalog.names())}")
        acc.prices = rows
    return catalog


def local_cpu(catalog: Catalog, calibrate: bool = True) -> Accelerator:
    """The ``cpu`` entry with this machine's RAM and (calibrated) peak filled in."""
    import psutil

    from leantrain.plan.calibrate import cpu_peak_tflops

    cpu = catalog.get("cpu")
    if cpu.memory_bytes is None:
        cpu.memory_bytes = float(psutil.virtual_memory().total)
    if calibrate and not cpu.peak_tflops:
        cpu.peak_tflops = cpu_peak_tflops()
    return cpu


def hourly_price(name: str, spot: bool = False) -> float:
    """Dollars per device-hour for accelerator ``name``: the cheapest listed provider.

    Raises UserError naming the allowed names when ``name`` is not in the catalog."""
    acc = load_catalog().get(name)
    row = acc.cheapest(spot)
    if row is None:
        kind = "spot" if spot else "on-demand"
        raise UserError(f"the catalog lists no {kind} price for {acc.name!r}; pass a price per hour instead")
    return row.usd_per_hour(spot)


def resolve_price(hardware) -> tuple[float, str]:
    """(price per device-hour, where it came from) for a recipe's ``hardware`` section.

    An explicit ``price_per_hour`` wins; otherwise a ``name`` found in the catalog gives
    its cheapest on-demand price; otherwise the section's default price applies."""
    if "price_per_hour" in hardware.model_fields_set:
        return float(hardware.price_per_hour), "hardware.price_per_hour"
    acc = load_catalog().find(hardware.name)
    row = acc.cheapest() if acc is not None else None
    if row is not None:
        return row.on_demand, f"catalog: {acc.name} on {row.provider} {row.instance}, list price as of {row.as_of}"
    return float(hardware.price_per_hour), "hardware.price_per_hour (default)"
