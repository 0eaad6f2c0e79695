"""``leantrain plan``: memory, FLOPs, hours and dollars of a recipe, before paying for it.

Why: the expensive mistakes are made before launch (renting 80 GB for a 20 GB job,
learning the bill afterwards). Everything here comes from the model's config and a
traced step on fake tensors (no weights), the recipe's cuts, the data's measured
lengths, and the dated catalog; nothing is a rule of thumb except the assumed
utilization of each accelerator, which the catalog states.
"""
from __future__ import annotations

from dataclasses import dataclass

from leantrain.plan import distributed_cost as dist
from leantrain.plan.catalog import Accelerator, Catalog, load_catalog, local_cpu
from leantrain.plan.estimate import StepModel, model_step
from leantrain.plan.meta_model import MODELED_CUTS, Setup, model_config
from leantrain.plan.workload import Workload, measure_workload


@dataclass
class PlanInputs:
    recipe: object
    config: object
    workload: Workload
    catalog: Catalog
    accelerators: list[Accelerator]
    spot: bool = False
    price_per_hour: float | None = None
    layout: dist.Layout = dist.Layout()

    def step_model(self, setup: Setup) -> StepModel:
        return model_step(self.config, self.recipe.model.task, setup, self.workload.seq_len_memory, self.workload.seq_len_flops)

    def units(self, setup: Setup) -> dist.Units:
        return dist.fsdp_units(self.config, self.recipe.model.task, setup)

    def rank_memory(self, step: StepModel, setup: Setup, overhead: float) -> dict[str, int]:
        """One device's peak-memory breakdown (the whole step on a single device)."""
        return dist.rank_memory(step, self.units(step.setup), self.layout, setup.micro_batch, setup.accumulation, overhead)


def step_seconds(step: StepModel, acc: Accelerator, setup: Setup) -> float:
    """Seconds per optimizer step: FLOPs at the assumed utilization, or, when larger, the
    memory traffic of reading the weights each pass and updating the trainable state, or
    the fixed per-op cost (which overlaps compute on a GPU and adds to it on a CPU)."""
    flops = step.flops_per_step(setup.effective_batch)["total"]
    compute = flops / (acc.peak_flops(setup.compute_dtype) * acc.training_efficiency)
    passes = (3 if setup.checkpointing else 2) * setup.accumulation
    # AdamW reads parameter, gradient and two states and writes three of them back.
    traffic = step.fixed.weights * passes + 7 * step.fixed.trainable_bytes
    memory = traffic / (acc.bandwidth_gbps * 1e9) if acc.bandwidth_gbps else 0.0
    launches = step.ops_per_micro_batch() * setup.accumulation * acc.op_latency_us * 1e-6
    busy = max(compute, memory)
    return max(busy, launches) if acc.async_launch else busy + launches


def _money(usd: float) -> float:
    return float(f"{usd:.4g}")


def price_of(inputs: PlanInputs, acc: Accelerator) -> dict:
    """The hourly prices used for ``acc``: the user's, or the cheapest catalog provider."""
    if inputs.price_per_hour is not None:
        return {"on_demand": inputs.price_per_hour, "spot": inputs.price_per_hour, "provider": "--price-per-hour",
                "instance": None, "price_as_of": None, "price_source": "command line"}
    row = acc.cheapest()
    spot_row = acc.cheapest(spot=True)
    if row is None:
        return {"on_demand": None, "spot": None, "provider": None, "instance": None, "price_as_of": None, "price_source": None}
    return {"on_demand": row.on_demand, "spot": spot_row.spot if spot_row else None, "provider": row.provider,
            "instance": row.instance, "price_as_of": row.as_of, "price_source": row.source}


def step_timing(inputs: PlanInputs, step: StepModel, acc: Accelerator, setup: Setup) -> dict:
    """Seconds per optimizer step on each device: compute, communication, and the step as
    planned (compute plus the communication compute cannot hide, see distributed_cost)."""
    compute = step_seconds(step, acc, setup)
    comm = dist.communication(inputs.units(step.setup), inputs.layout, setup.accumulation)
    bandwidth, link = dist.bus_bandwidth(acc, inputs.layout)
    flops = step.flops_per_step(setup.effective_batch)
    forward_fraction = flops["forward"] / flops["total"] if flops["total"] else 0.5
    timing = dist.comm_timing(comm, compute, forward_fraction, setup.accumulation, bandwidth)
    return {"compute_seconds": compute, **timing, "step_seconds": compute + timing["exposed_comm_seconds"],
            "step_seconds_no_overlap": compute + timing["comm_seconds"], "link": link, "link_gbps": bandwidth / 1e9}


def run_cost(inputs: PlanInputs, step: StepModel, acc: Accelerator, setup: Setup) -> dict:
    """Hours and dollars of the whole run with ``setup`` on the layout's devices of
    ``acc``: wall-clock hours, and dollars for every device (world size x hourly price)."""
    devices = inputs.layout.world_size
    # A step spans every rank's micro-batches, as in the run (session.py).
    steps = inputs.workload.total_steps(inputs.recipe.train, setup.micro_batch, setup.accumulation * devices)
    price = price_of(inputs, acc)
    timing = step_timing(inputs, step, acc, setup)
    seconds = {"compute_seconds_per_step": _money(timing["compute_seconds"]),
               "comm_seconds_per_step": _money(timing["comm_seconds"]),
               "exposed_comm_seconds_per_step": _money(timing["exposed_comm_seconds"]),
               "link": timing["link"], "link_gbps": timing["link_gbps"]}
    if steps is None:
        return {"steps": None, "devices": devices, "hours": None, "hours_no_overlap": None, "usd_on_demand": None,
                "usd_spot": None, **seconds, **price}
    hours = steps * timing["step_seconds"] / 3600
    usd = lambda p: _money(hours * p * devices) if p is not None else None  # noqa: E731
    return {"steps": steps, "devices": devices, "hours": float(f"{hours:.4g}"),
            "hours_no_overlap": float(f"{steps * timing['step_seconds_no_overlap'] / 3600:.4g}"),
            "usd_on_demand": usd(price["on_demand"]), "usd_spot": usd(price["spot"]), **seconds, **price}


def gpu_row(inputs: PlanInputs, step: StepModel, acc: Accelerator) -> dict:
    setup = step.setup
    memory = inputs.rank_memory(step, setup, acc.overhead_bytes)
    fits = memory["total"] <= acc.memory_bytes
    row = {"name": acc.name, "memory_bytes": int(acc.memory_bytes), "compute_dtype": acc.compute_dtype(setup.compute_dtype),
           "peak_memory_bytes": memory["total"], "fits": fits,
           "max_batch_size": dist.max_batch(step, inputs.units(setup), inputs.layout, setup.accumulation,
                                            acc.memory_bytes, acc.overhead_bytes)}
    cost = run_cost(inputs, step, acc, setup)
    if not fits:  # a run that cannot start has no duration; the recommendation shows what does fit
        cost.update(hours=None, hours_no_overlap=None, usd_on_demand=None, usd_spot=None)
    return {**row, **cost}


def resolve_accelerators(catalog: Catalog, names: list[str] | None) -> list[Accelerator]:
    chosen = [catalog.get(n) for n in names] if names else list(catalog.accelerators.values())
    return [local_cpu(catalog) if acc.name == "cpu" else acc for acc in chosen]


def prepare(recipe, gpus: list[str] | None = None, spot: bool = False, price_per_hour: float | None = None,
            rows: int | None = None, catalog_file: str | None = None, nproc: int | None = None,
            nodes: int | None = None, tokens: int | None = None) -> PlanInputs:
    layout = dist.Layout.from_recipe(recipe, nproc, nodes)
    catalog = load_catalog(catalog_file)
    accelerators = resolve_accelerators(catalog, gpus)  # a mistyped --gpu fails before any slow work
    setup = Setup.from_recipe(recipe)
    workload = measure_workload(recipe, setup.accumulation, rows, tokens)
    config = model_config(recipe.model, workload.num_labels)
    return PlanInputs(recipe, config, workload, catalog, accelerators, spot, price_per_hour, layout)


def plan(recipe, gpus: list[str] | None = None, spot: bool = False, price_per_hour: float | None = None,
         rows: int | None = None, catalog_file: str | None = None, recommend: bool = True,
         nproc: int | None = None, nodes: int | None = None, tokens: int | None = None) -> dict:
    """The plan as a JSON-ready dict (see docs/plan.md for every key). ``nproc`` devices
    on each of ``nodes`` machines train with DDP, or FSDP when the recipe has cuts.fsdp."""
    from leantrain.plan.recommend import recommendation

    inputs = prepare(recipe, gpus, spot, price_per_hour, rows, catalog_file, nproc, nodes, tokens)
    setup = Setup.from_recipe(recipe)
    step = inputs.step_model(setup)
    # The headline peak is for the device the recipe is billed as (hardware.name).
    target = inputs.catalog.find(recipe.hardware.name)
    memory = inputs.rank_memory(step, setup, target.overhead_bytes if target else 0.0)
    flops = step.flops_per_step()
    layout = inputs.layout
    skipped = sorted(set(recipe.enabled_cuts()) - set(MODELED_CUTS))
    notes = list(inputs.workload.notes)
    lora = recipe.enabled_cuts().get("lora")
    if lora is not None and lora.layers is not None:
        notes.append(f"lora.layers {lora.layers}: planned with adapters on every block (an upper bound for adapter "
                     "memory, FLOPs and backward depth)")
    if skipped:
        notes.append(f"cuts the planner does not model (their effect on a step's memory and FLOPs is not included): "
                     f"{', '.join(skipped)}")
    result = {
        "model": recipe.model.name_or_path,
        "task": recipe.model.task,
        "params": step.params,
        "target": target.name if target else recipe.hardware.name,
        "setup": {"cuts": setup.cuts_label(), "micro_batch": setup.micro_batch, "accumulation": setup.accumulation,
                  "effective_batch": setup.effective_batch, "dtype": setup.compute_dtype},
        "seq_len": {"memory": inputs.workload.seq_len_memory, "flops": inputs.workload.seq_len_flops},
        "train_rows": inputs.workload.train_rows,
        "peak_memory_bytes": memory["total"],
        "memory_breakdown": memory,
        "accounted_bytes": step.accounted_bytes(setup.micro_batch),
        "flops_per_step": flops["total"],
        "flops_breakdown": flops,
        "tokens_per_step": setup.effective_batch * layout.world_size * inputs.workload.seq_len_flops,
        "distribution": {"strategy": layout.strategy, "nproc_per_node": layout.nproc, "nodes": layout.nodes,
                         "world_size": layout.world_size, "global_batch": setup.effective_batch * layout.world_size,
                         "communication": dist.communication(inputs.units(setup), layout, setup.accumulation)},
        "gpus": [gpu_row(inputs, step, acc) for acc in inputs.accelerators],
        "spot": spot,
        "notes": notes,
    }
    if recommend:
        result["recommendation"] = recommendation(inputs, setup)
    return result
