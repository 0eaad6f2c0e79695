"""`leantrain plan` (memory, FLOPs, hours and dollars before launch) and `leantrain hardware`."""
from __future__ import annotations

import json


def register(subparsers) -> dict:
    plan = subparsers.add_parser("plan", help="predict memory, FLOPs, hours and dollars of a recipe (no weights downloaded)")
    plan.add_argument("recipe")
    plan.add_argument("--gpu", dest="gpus", action="append", metavar="NAME",
                      help="accelerator from the catalog (repeatable; default: every one; see `leantrain hardware`)")
    plan.add_argument("--spot", action="store_true", help="recommend by spot prices instead of on-demand")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("--price-per-hour", type=float, metavar="USD", help="price of one device-hour for every listed GPU")
    size = plan.add_mutually_exclusive_group()
    size.add_argument("--rows", type=int, metavar="N", help="training rows, when the data is not at hand")
    size.add_argument("--tokens", type=int, metavar="N", help="training tokens (rows = N / mean sequence length), when the data is not at hand")
    plan.add_argument("--catalog", metavar="FILE", help="your own catalog (YAML/JSON) extending or overriding the built-in one")
    plan.add_argument("--nproc", type=int, metavar="N", help="devices (processes) per node, as torchrun's --nproc_per_node "
                      "(default 1); DDP, or FSDP when the recipe has cuts.fsdp")
    plan.add_argument("--nodes", type=int, metavar="M", help="machines, each with --nproc devices (default 1)")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")

    hardware = subparsers.add_parser("hardware", help="list the hardware and price catalog")
    hardware.add_argument("--json", action="store_true")
    hardware.add_argument("--catalog", metavar="FILE")
    hardware.add_argument("--calibrate", action="store_true", help="re-measure this CPU's peak instead of using the cache")
    return {"plan": _plan, "hardware": _hardware}


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def _size(n) -> str:
    """Bytes in the largest binary unit that keeps them readable (communication can be KiB or GiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def usd_text(n) -> str:
    return "-" if n is None else f"${n:.3g}" if n < 1 else f"${n:,.2f}"


def _plan(args) -> int:
    from leantrain.errors import UserError
    from leantrain.plan.planner import plan
    from leantrain.recipe import load_recipe

    if args.price_per_hour is not None and args.price_per_hour < 0:
        raise UserError(f"--price-per-hour: must be >= 0 (got {args.price_per_hour})")
    for flag, value in (("--rows", args.rows), ("--tokens", args.tokens)):
        if value is not None and value < 1:
            raise UserError(f"{flag}: must be >= 1 (got {value})")
    recipe = load_recipe(args.recipe, args.overrides)
    result = plan(recipe, args.gpus, args.spot, args.price_per_hour, args.rows, args.catalog,
                  nproc=args.nproc, nodes=args.nodes, tokens=args.tokens)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(render_plan(result))
    return 0


def _distribution_lines(p: dict) -> list[str]:
    d = p["distribution"]
    if d["world_size"] == 1:
        return []
    comm = d["communication"]
    parts = ", ".join(f"{k.replace('_', ' ')} {_size(v)}" for k, v in comm["breakdown"].items())
    return [f"distributed: {d['strategy'].upper()} on {d['nodes']} node(s) x {d['nproc_per_node']} device(s) = "
            f"{d['world_size']} devices, global batch {d['global_batch']}; memory below is per device",
            f"communication per step per device (sent, ring collectives): {_size(comm['bytes_per_step'])} ({parts})"]


def render_plan(p: dict) -> str:
    setup, mem, flops = p["setup"], p["memory_breakdown"], p["flops_breakdown"]
    lines = [
        f"{p['model']} ({p['task']}): {p['params']['total']:,} parameters, {p['params']['trainable']:,} trainable",
        f"step: {setup['cuts']}, micro-batch {setup['micro_batch']} x {setup['accumulation']} accumulated, "
        f"sequence {p['seq_len']['memory']} (longest batch) / {p['seq_len']['flops']} (mean), {p['train_rows'] or '?'} training rows",
        *_distribution_lines(p),
        "",
        f"peak memory on {p['target']}: {_gib(p['peak_memory_bytes'])}",
    ]
    for key in ("weights", "gradients", "optimizer_states", "gathered_weights", "gathered_gradients",
                "saved_activations", "temporaries", "framework_overhead"):
        if mem.get(key) or not key.startswith("gathered"):
            lines.append(f"  {key.replace('_', ' '):<20} {_gib(mem[key]):>12}")
    distributed = p["distribution"]["world_size"] > 1
    lines += [
        f"FLOPs per step{' per device' if distributed else ''}: {flops['total']:.3e} (forward {flops['forward']:.3e}, "
        f"backward {flops['backward']:.3e}, recompute {flops['recompute']:.3e}); {p['tokens_per_step']:,} tokens per step",
        "",
        f"{'gpu':<10} {'fits':<5} {'peak':>11} {'max batch':>9} {'hours':>9} {'on-demand':>11} {'spot':>11}  cheapest listing",
    ]
    for g in p["gpus"]:
        hours = "-" if g["hours"] is None else f"{g['hours']:.3g}"
        where = f"{g['provider']} {g['instance']} ({g['price_as_of']})" if g.get("instance") else (g.get("provider") or "-")
        lines.append(f"{g['name']:<10} {'yes' if g['fits'] else 'no':<5} {_gib(g['peak_memory_bytes']):>11} "
                     f"{g['max_batch_size']:>9} {hours:>9} {usd_text(g['usd_on_demand']):>11} {usd_text(g['usd_spot']):>11}  {where}")
        if distributed:
            lines.append(f"{'':<10} step {g['compute_seconds_per_step']:.3g} s compute + {g['comm_seconds_per_step']:.3g} s "
                         f"communication over {g['link']} at {g['link_gbps']:.4g} GB/s, {g['exposed_comm_seconds_per_step']:.3g} s "
                         f"not hidden; no overlap: {'-' if g['hours_no_overlap'] is None else format(g['hours_no_overlap'], '.3g')} h; "
                         f"dollars for {g['devices']} devices")
    rec = p.get("recommendation") or {}
    lines.append("")
    if "gpu" in rec:
        lines.append(f"recommended ({rec['pricing']}): {rec['gpu']}, {rec['cuts']} (computes in {rec['compute_dtype']}), "
                     f"micro-batch {rec['micro_batch']} x {rec['accumulation']} -> {rec['hours']:.3g} h, {usd_text(rec['usd'])}")
        base = rec.get("baseline")
        if base:
            lines.append(f"  vs full fine-tuning in fp32 ({base['gpu']}, micro-batch {base['micro_batch']} x "
                         f"{base['accumulation']}): {usd_text(base['usd'])}; saving {usd_text(rec['saving_usd'])}")
        else:
            lines.append(f"  {rec.get('baseline_note')}")
    elif rec:
        lines.append(f"recommendation: {rec['note']}")
    lines += [f"note: {n}" for n in p["notes"]]
    lines.append("assumptions: hours = FLOPs / (peak x the catalog's training_efficiency), or memory traffic if slower; "
                 "prices are dated list prices (see `leantrain hardware`)")
    if distributed:
        lines.append("assumptions (distributed): ring collectives at the catalog's nominal link bandwidth; forward traffic "
                     "hides behind forward compute, backward traffic behind backward compute (docs/plan.md)")
    return "\n".join(lines)


def _listing(price: dict) -> str:
    spot = "-" if price["spot"] is None else f"${price['spot']:.4g}"
    return f"{price['provider']} {price['region']} {price['instance']}: ${price['on_demand']:.4g} / {spot} ({price['as_of']})"


def _hardware(args) -> int:
    from leantrain.plan.calibrate import cpu_peak_tflops
    from leantrain.plan.catalog import load_catalog, local_cpu

    catalog = load_catalog(args.catalog)
    if args.calibrate:
        catalog.get("cpu").peak_tflops = cpu_peak_tflops(refresh=True)
    local_cpu(catalog)
    rows = []
    for acc in catalog.accelerators.values():
        rows.append({
            "name": acc.name, "description": acc.description, "memory_bytes": acc.memory_bytes,
            "peak_tflops": acc.peak_tflops, "bandwidth_gbps": acc.bandwidth_gbps,
            "training_efficiency": acc.training_efficiency, "source": acc.source,
            "intra_node_gbps": acc.intra_node_gbps, "inter_node_gbps": acc.inter_node_gbps, "link_source": acc.link_source,
            "prices": [vars(r) for r in acc.prices],
        })
    if args.json:
        print(json.dumps({"catalog_files": catalog.sources, "accelerators": rows}, indent=2))
        return 0
    print(f"{'name':<10} {'memory':>9} {'fp32':>7} {'bf16':>7} {'fp16':>7} {'GB/s':>6}  prices per device-hour (on-demand / spot)")
    for row in rows:
        t = row["peak_tflops"]
        prices = "; ".join(_listing(p) for p in row["prices"]) or "-"
        tf = lambda k: f"{t[k]:.4g}" if k in t else "-"  # noqa: E731
        print(f"{row['name']:<10} {_gib(row['memory_bytes']):>9} {tf('fp32'):>7} {tf('bf16'):>7} {tf('fp16'):>7} "
              f"{row['bandwidth_gbps']:>6.0f}  {prices}")
    print("TFLOP/s dense peaks from datasheets (cpu: measured here); prices as of the date shown, "
          "sources in `leantrain hardware --json`; catalog: " + ", ".join(catalog.sources))
    return 0
