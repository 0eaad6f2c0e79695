"""The cheapest way to run a recipe that fits, and what it saves against the naive way.

Why these candidates: precision, checkpointing and accumulation change cost but not what
the model learns (bf16 autocast keeps fp32 master weights; accumulation is exact in
leantrain), so they are free to choose. LoRA changes what is trained, so the search
keeps the recipe's choice. The effective batch is held fixed: micro-batch x accumulation
always equals the recipe's, with the micro-batch the largest divisor that fits.
"""
from __future__ import annotations

from leantrain.cuts.gradient_checkpointing import CheckpointingSettings
from leantrain.plan.meta_model import Setup
from leantrain.plan.planner import PlanInputs, run_cost


def candidate_setups(recipe_setup: Setup) -> list[Setup]:
    lora = recipe_setup.lora
    checkpointing = recipe_setup.checkpointing or CheckpointingSettings(enabled=True)
    found = {recipe_setup.key(): recipe_setup}
    baseline = baseline_setup(recipe_setup)  # on small models the plain way can be cheapest
    found[baseline.key()] = baseline
    for ckpt in (None, checkpointing):
        for dtype in ("fp32", "bf16"):
            frozen = "bf16" if lora is not None and dtype == "bf16" else None
            setup = Setup(lora, ckpt, dtype, frozen, recipe_setup.micro_batch, recipe_setup.accumulation,
                          cpu_matmul_attention=recipe_setup.cpu_matmul_attention and dtype == "bf16")
            found.setdefault(setup.key(), setup)
    return list(found.values())


def baseline_setup(recipe_setup: Setup) -> Setup:
    """Full fine-tuning in fp32, no checkpointing: what the saving is measured against."""
    return Setup(None, None, "fp32", None, recipe_setup.micro_batch, recipe_setup.accumulation)


def _divisors(n: int) -> list[int]:
    return sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True)


def best_on(inputs: PlanInputs, setup: Setup, price_key: str) -> dict | None:
    """The cheapest fitting (accelerator, micro-batch) for ``setup``, or None."""
    step = inputs.step_model(setup)
    effective = setup.effective_batch
    best = None
    for acc in inputs.accelerators:
        micro = next((b for b in _divisors(effective)
                      if inputs.rank_memory(step, setup.with_batch(b, effective // b), acc.overhead_bytes)["total"]
                      <= acc.memory_bytes), None)
        if micro is None:
            continue
        sized = setup.with_batch(micro, effective // micro)
        cost = run_cost(inputs, step, acc, sized)
        if cost.get(price_key) is None:
            continue
        option = {"gpu": acc.name, "cuts": setup.cuts_label(), "compute_dtype": acc.compute_dtype(setup.compute_dtype), "micro_batch": micro, "accumulation": effective // micro,
                  "effective_batch": effective, "peak_memory_bytes": inputs.rank_memory(step, sized, acc.overhead_bytes)["total"],
                  **cost, "usd": cost[price_key]}
        if best is None or option["usd"] < best["usd"]:
            best = option
    return best


def recommendation(inputs: PlanInputs, recipe_setup: Setup) -> dict:
    price_key = "usd_spot" if inputs.spot else "usd_on_demand"
    if inputs.workload.total_steps(inputs.recipe.train, 1, 1) is None:
        return {"note": "the number of training rows is unknown (no data at hand): pass --rows N or --tokens N to compare costs"}
    options = [o for s in candidate_setups(recipe_setup) if (o := best_on(inputs, s, price_key))]
    if not options:
        return {"note": "no candidate fits on any listed GPU, even at micro-batch 1 with checkpointing"}
    # Cheapest first; among equal costs, the one with the fewest cuts (shortest label).
    chosen = min(options, key=lambda o: (o["usd"], len(o["cuts"])))
    baseline = best_on(inputs, baseline_setup(recipe_setup), price_key)
    result = {**chosen, "pricing": "spot" if inputs.spot else "on-demand", "baseline": baseline}
    if baseline is not None:
        result["saving_usd"] = float(f"{baseline['usd'] - chosen['usd']:.4g}")
        result["saving_fraction"] = round(1 - chosen["usd"] / baseline["usd"], 4) if baseline["usd"] else None
    else:
        result["saving_usd"] = None
        result["baseline_note"] = "full fine-tuning in fp32 fits on none of the listed GPUs"
    return result
