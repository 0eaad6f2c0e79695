"""``leantrain plan``: memory, FLOPs, hours and dollars of a recipe, before paying for it.

Why: the expensive mistakes are made before launch (renting 80 GB for a 20 GB job,
learning the bill afterwards). Everything here comes from the model's config and a
traced step on fake tensors (no weights), the recipe's cuts, the data's measured
lengths, and the dated catalog; nothing is a rule of thumb except the assumed
utilization of each accelerator, which the catalog states.
"""
from __future__ import annotations

from dataclasses import dataclass

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

    def step_model(self, setup: Setup) -> StepModel:
        return model_step(self.config, self.recipe.model.task, setup, self.workload.seq_len_memory, self.workload.seq_len_flops)


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


def run_cost(inputs: PlanInputs, step: StepModel, acc: Accelerator, setup: Setup) -> dict:
    """Hours and dollars of the whole run with ``setup`` on one ``acc``."""
    steps = inputs.workload.total_steps(inputs.recipe.train, setup.micro_batch, setup.accumulation)
    price = price_of(inputs, acc)
    if steps is None:
        return {"steps": None, "hours": None, "usd_on_demand": None, "usd_spot": None, **price}
    hours = steps * step_seconds(step, acc, setup) / 3600
    usd = lambda p: _money(hours * p) if p is not None else None  # noqa: E731
    return {"steps": steps, "hours": float(f"{hours:.4g}"), "usd_on_demand": usd(price["on_demand"]),
            "usd_spot": usd(price["spot"]), **price}


def gpu_row(inputs: PlanInputs, step: StepModel, acc: Accelerator) -> dict:
    setup = step.setup
    memory = step.memory(setup.micro_batch, acc.overhead_bytes)
    fits = memory["total"] <= acc.memory_bytes
    row = {"name": acc.name, "memory_bytes": int(acc.memory_bytes), "compute_dtype": acc.compute_dtype(setup.compute_dtype),
           "peak_memory_bytes": memory["total"], "fits": fits,
           "max_batch_size": step.max_batch(acc.memory_bytes, acc.overhead_bytes)}
    cost = run_cost(inputs, step, acc, setup)
    if not fits:  # a run that cannot start has no duration; the recommendation shows what does fit
        cost.update(hours=None, usd_on_demand=None, usd_spot=None)
    return {**row, **cost}


def resolve_accelerators(catalog: Catalog, names: list[str] | None) -> list[Accelerator]:
    chosen = [catalog.get(n) for n in names] if names else list(catalog.accelerators.values())
    return [local_cpu(catalog) if acc.name == "cpu" else acc for acc in chosen]


def prepare(recipe, gpus: list[str] | None = None, spot: bool = False, price_per_hour: float | None = None,
            rows: int | None = None, catalog_file: str | None = None) -> PlanInputs:
    catalog = load_catalog(catalog_file)
    accelerators = resolve_accelerators(catalog, gpus)  # a mistyped --gpu fails before any slow work
    setup = Setup.from_recipe(recipe)
    workload = measure_workload(recipe, setup.accumulation, rows)
    config = model_config(recipe.model, workload.num_labels)
    return PlanInputs(recipe, config, workload, catalog, accelerators, spot, price_per_hour)


def plan(recipe, gpus: list[str] | None = None, spot: bool = False, price_per_hour: float | None = None,
         rows: int | None = None, catalog_file: str | None = None, recommend: bool = True) -> dict:
    """The plan as a JSON-ready dict (see docs/plan.md for every key)."""
    from leantrain.plan.recommend import recommendation

    inputs = prepare(recipe, gpus, spot, price_per_hour, rows, catalog_file)
    setup = Setup.from_recipe(recipe)
    step = inputs.step_model(setup)
    # The headline peak is for the device the recipe is billed as (hardware.name).
    target = inputs.catalog.find(recipe.hardware.name)
    memory = step.memory(setup.micro_batch, target.overhead_bytes if target else 0.0)
    flops = step.flops_per_step()
    skipped = sorted(set(recipe.enabled_cuts()) - set(MODELED_CUTS))
    notes = list(inputs.workload.notes)
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
        "tokens_per_step": setup.effective_batch * inputs.workload.seq_len_flops,
        "gpus": [gpu_row(inputs, step, acc) for acc in inputs.accelerators],
        "spot": spot,
        "notes": notes,
    }
    if recommend:
        result["recommendation"] = recommendation(inputs, setup)
    return result
