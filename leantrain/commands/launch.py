"""`leantrain launch RECIPE --cloud C [--gpu NAME] [--nodes N] [--spot] --output sky.yaml`."""
from __future__ import annotations


def register(subparsers) -> dict:
    launch = subparsers.add_parser(
        "launch", help="write a SkyPilot task that trains a recipe on cloud (spot) machines and resumes after preemption")
    launch.add_argument("recipe")
    launch.add_argument("--cloud", required=True, help="SkyPilot cloud: aws, gcp, azure, lambda, runpod, kubernetes, ...")
    launch.add_argument("--gpu", help="accelerator per node, NAME or NAME:COUNT (e.g. A10G, A100:8); default: CPU nodes")
    launch.add_argument("--nodes", type=int, default=1, help="machines; each runs one process per GPU (default 1)")
    launch.add_argument("--spot", action="store_true", help="use spot instances (the managed job recovers from preemption)")
    launch.add_argument("--bucket", help="bucket that holds the run directory (default leantrain-<run name>)")
    launch.add_argument("--mount-mode", default="MOUNT_CACHED", choices=("MOUNT_CACHED", "MOUNT"),
                        help="how the bucket is mounted (default MOUNT_CACHED: local writes, uploaded behind training)")
    launch.add_argument("--install", default="leantrain", help="what `pip install` installs on each node (default leantrain)")
    launch.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value when checking it (the job runs the recipe file as is)")
    launch.add_argument("--output", default="sky.yaml", help="where the task file goes (default sky.yaml)")
    return {"launch": _launch}


def _launch(args) -> int:
    from pathlib import Path

    from leantrain.commands.plan import usd_text
    from leantrain.launch.skypilot import (
        JobSpec, hourly_prices, job_path, planned_cost, task_yaml, validate_with_skypilot)
    from leantrain.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # a broken recipe fails here, not on a paid machine
    spec = JobSpec(recipe_path=job_path(args.recipe), run_name=recipe.run_dir().name, cloud=args.cloud, gpu=args.gpu,
                   nodes=args.nodes, spot=args.spot, bucket=args.bucket, mount_mode=args.mount_mode,
                   install=args.install)
    text = task_yaml(spec)
    output = Path(args.output)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    version = validate_with_skypilot(str(output))
    print(f"checked with SkyPilot {version}'s parser" if version else "SkyPilot is not installed: the file was not "
          "checked by its parser (pip install 'leantrain[skypilot]')")
    prices = hourly_prices(spec)
    if prices is None:
        print("cost: the price catalog is not available (leantrain.plan.catalog); no estimate")
    else:
        on_demand, spot = prices
        print(f"cost of the job: ${on_demand:.2f}/h on demand, ${spot:.2f}/h on spot "
              f"({spec.nodes} node(s) x {max(spec.gpus_per_node, 1)} device(s))")
        planned = planned_cost(recipe, spec)
        if "unavailable" in planned:
            print(f"planned run: no estimate ({planned['unavailable']})")
        else:
            print(f"planned run: {planned['hours']:.3g} h on {planned['devices']} device(s) ({planned['strategy']}, "
                  f"{planned['comm_seconds_per_step']:.3g} s of communication per step, "
                  f"{planned['exposed_comm_seconds_per_step']:.3g} s not hidden by compute): "
                  f"{usd_text(planned['usd_on_demand'])} on demand, {usd_text(planned['usd_spot'])} on spot "
                  "(`leantrain plan` for the breakdown)")
    print(f"start it: sky jobs launch {output}")
    return 0
