"""A SkyPilot task for a leantrain recipe: spot instances that survive their preemptions.

SkyPilot (``sky jobs launch``) provisions the machines, mounts a bucket, restarts the
job elsewhere when the spot instance is taken back, and sets each node's rank and
peers (``SKYPILOT_NODE_RANK``, ``SKYPILOT_NODE_IPS``, ``SKYPILOT_NUM_GPUS_PER_NODE``).
leantrain's part is what makes a restart cheap: the run directory lives in the bucket,
checkpoints are atomic and verified, and the run command always says ``--resume auto``,
so a recovered job continues from the newest valid checkpoint instead of step 0.

The bucket is mounted with MOUNT_CACHED by default: writes land on local disk and are
uploaded behind the training (rclone), and directory renames work, which the atomic
checkpoint write relies on. A checkpoint whose upload a preemption cut short fails its
manifest check on resume and the previous one is used.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from leantrain.errors import UserError

# SkyPilot's cloud names (``sky check`` lists the ones a user has enabled).
CLOUDS = ("aws", "gcp", "azure", "lambda", "runpod", "kubernetes", "oci", "nebius", "paperspace", "fluidstack",
          "cudo", "ibm", "scp", "vast", "do", "hyperbolic", "vsphere", "ssh")
# The bucket kind each cloud's own object store is; other clouds let SkyPilot choose.
STORES = {"aws": "s3", "gcp": "gcs", "azure": "azure", "ibm": "ibm", "oci": "oci", "nebius": "nebius"}
MOUNT_MODES = ("MOUNT_CACHED", "MOUNT")
MOUNT_POINT = "/leantrain-runs"
MASTER_PORT = 12375


@dataclass
class JobSpec:
    recipe_path: str          # as the job's working directory will see it
    run_name: str             # the recipe's run directory name, kept inside the bucket
    cloud: str
    gpu: str | None = None    # accelerator NAME or NAME:COUNT per node; None: CPU nodes
    nodes: int = 1
    spot: bool = False
    bucket: str | None = None
    mount_mode: str = "MOUNT_CACHED"
    install: str = "leantrain"  # what `pip install` gets on each node

    def check(self) -> None:
        if self.cloud not in CLOUDS:
            raise UserError(f"--cloud {self.cloud!r}: allowed values are {', '.join(CLOUDS)}")
        if self.nodes < 1:
            raise UserError(f"--nodes {self.nodes}: must be at least 1")
        if self.gpu is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[1-9][0-9]*)?", self.gpu):
            raise UserError(f"--gpu {self.gpu!r}: expected an accelerator name such as A10G or A100:8 (NAME[:COUNT])")
        if self.mount_mode not in MOUNT_MODES:
            raise UserError(f"--mount-mode {self.mount_mode!r}: allowed values are {', '.join(MOUNT_MODES)}")
        if self.bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.bucket):
            raise UserError(f"--bucket {self.bucket!r}: bucket names are 3-63 lower-case letters, digits, dots and dashes")

    @property
    def bucket_name(self) -> str:
        return self.bucket or "leantrain-" + re.sub(r"[^a-z0-9-]+", "-", self.run_name.lower()).strip("-")[:40]

    @property
    def gpus_per_node(self) -> int:
        if self.gpu is None:
            return 0
        return int(self.gpu.split(":")[1]) if ":" in self.gpu else 1

    @property
    def accelerator(self) -> str | None:
        return None if self.gpu is None else self.gpu.split(":")[0]


def job_path(path: str) -> str:
    """``path`` as the job sees it: relative to the working directory SkyPilot uploads."""
    here = Path.cwd().resolve()
    try:
        return Path(path).resolve().relative_to(here).as_posix()
    except ValueError:
        raise UserError(f"{path}: the recipe must be inside the current directory ({here}), which SkyPilot uploads "
                        "as the job's working directory; run `leantrain launch` from a folder that holds it") from None


def run_script(spec: JobSpec) -> str:
    """The shell each node runs: torchrun over all nodes, leantrain resuming what it can."""
    run_dir = f"{MOUNT_POINT}/{spec.run_name}"
    train = ["-m", "leantrain", "train", spec.recipe_path, "--no-smoke", "--quiet", "--resume", "auto",
             "--set", f"output.dir={run_dir}"]
    return "\n".join([
        "set -e",
        "# One process per GPU (one per node on CPU machines); the first node hosts the rendezvous.",
        'NPROC="${SKYPILOT_NUM_GPUS_PER_NODE:-0}"; if [ "$NPROC" -lt 1 ]; then NPROC=1; fi',
        'MASTER_ADDR="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"',
        "python -m torch.distributed.run \\",
        '  --nnodes="$SKYPILOT_NUM_NODES" --node_rank="$SKYPILOT_NODE_RANK" --nproc_per_node="$NPROC" \\',
        f'  --master_addr="$MASTER_ADDR" --master_port={MASTER_PORT} \\',
        "  " + " ".join(shlex.quote(part) for part in train),
        "",
    ])


def setup_script(spec: JobSpec) -> str:
    lines = ["set -e"]
    if spec.gpu is None:
        # pip's default torch wheel bundles CUDA (gigabytes); CPU nodes need the CPU build.
        lines.append("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    else:
        lines.append("# The default torch wheel from PyPI carries CUDA for the GPU nodes.")
    lines.append(f"pip install {shlex.quote(spec.install)}")
    return "\n".join(lines) + "\n"


def task(spec: JobSpec) -> dict:
    """The SkyPilot task as a mapping, in the keys of SkyPilot's task YAML."""
    spec.check()
    resources: dict = {"cloud": spec.cloud, "use_spot": spec.spot}
    if spec.gpu is not None:
        resources["accelerators"] = f"{spec.accelerator}:{spec.gpus_per_node}"
    if spec.spot:
        # A managed job on spot capacity: when preempted, relaunch (in another zone or
        # region if need be) and run the same command, which resumes from the bucket.
        resources["job_recovery"] = {"strategy": "FAILOVER", "max_restarts_on_errors": 0}
    mount = {"name": spec.bucket_name, "mode": spec.mount_mode}
    if spec.cloud in STORES:
        mount["store"] = STORES[spec.cloud]
    return {
        "name": f"leantrain-{spec.run_name}",
        "num_nodes": spec.nodes,
        "resources": resources,
        "workdir": ".",  # the recipe and its data go up with the working directory
        "file_mounts": {MOUNT_POINT: mount},
        "setup": setup_script(spec),
        "run": run_script(spec),
    }


class _Literal(str):
    """A multi-line string written as a YAML block (``|``), readable in the task file."""


def _literal(dumper: yaml.SafeDumper, value: _Literal):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(_Literal, _literal)


def task_yaml(spec: JobSpec) -> str:
    data = task(spec)
    data["setup"], data["run"] = _Literal(data["setup"]), _Literal(data["run"])
    header = (f"# SkyPilot task written by `leantrain launch` for {spec.recipe_path}.\n"
              f"# Start it as a managed job (it recovers from preemption): sky jobs launch <this file>\n")
    return header + yaml.dump(data, Dumper=_TaskDumper, sort_keys=False)


def validate_with_skypilot(path: str) -> str | None:
    """Parse the file with SkyPilot's own loader when SkyPilot is installed; returns
    its version, or None when it is not installed. A file SkyPilot rejects is an error."""
    try:
        import sky
    except ImportError:
        return None
    try:
        sky.Task.from_yaml(path)
    except Exception as exc:  # SkyPilot raises several kinds for a bad task
        raise UserError(f"{path}: SkyPilot rejects the task: {str(exc).splitlines()[0]}") from None
    return getattr(sky, "__version__", "?")


def hourly_prices(spec: JobSpec) -> tuple[float, float] | None:
    """(on-demand, spot) dollars per hour for the whole job from the planner's price
    catalog, or None when the catalog is not available or does not list the machine."""
    try:
        from leantrain.plan.catalog import hourly_price
    except ImportError:
        return None
    name = spec.accelerator or "cpu"
    devices = max(spec.gpus_per_node, 1) * spec.nodes
    try:
        return hourly_price(name, spot=False) * devices, hourly_price(name, spot=True) * devices
    except (KeyError, ValueError, UserError):
        return None


def planned_cost(recipe, spec: JobSpec) -> dict:
    """The planner's figures for the whole job: every device of every node billed, with
    DDP's or FSDP's communication over the catalog's links (``leantrain plan --nproc
    GPUS_PER_NODE --nodes N``); ``{"unavailable": why}`` when the planner cannot say."""
    try:
        from leantrain.plan.planner import plan
    except ImportError:
        return {"unavailable": "the planner is not installed"}
    try:
        result = plan(recipe, gpus=[spec.accelerator or "cpu"], nproc=max(spec.gpus_per_node, 1), nodes=spec.nodes,
                      recommend=False)
    except UserError as exc:
        return {"unavailable": str(exc)}
    row = result["gpus"][0]
    if row.get("hours") is None:
        # Most often the data does not exist yet: the planner's note says so and how to size it.
        sizing = [note for note in result.get("notes", []) if "--rows" in note]
        return {"unavailable": sizing[0] if sizing else f"{row.get('gpu', spec.accelerator)} has no hours in the plan"}
    return {**row, "strategy": result["distribution"]["strategy"]}
