"""Per-rank memory and communication of a step on several devices (DDP or FSDP2).

Why a separate model: on W devices the bill is W times the hourly price, and what each
device must hold and send depends on how the run is wrapped. Everything here follows
what ``leantrain.engine.distributed.Parallel`` configures, so plan and run agree:

* DDP (``DistributedDataParallel(..., gradient_as_bucket_view=True)``, 25 MB buckets):
  every rank keeps whole weights, gradients and AdamW states. The gradients *are* views
  into the all-reduce buckets, so the buckets add no memory. Gradients are all-reduced
  once per optimizer step (``no_sync`` on the earlier micro-batches), buffers are
  broadcast from rank 0 once per optimizer step (DDP skips the broadcast after a
  ``no_sync`` forward).
* FSDP2 (``fully_shard`` on every ``_no_split_modules`` block, then on the root, with
  ``reshard_after_forward`` passed explicitly, so the root reshards too): each rank keeps
  its dim-0 shard of every parameter (padded to a multiple of W), of their gradients and
  AdamW states; buffers stay whole. A unit's weights are all-gathered before its forward
  and, if resharded after forward, again before its backward, on every micro-batch; the
  gradients are reduce-scattered on the last micro-batch only
  (``set_requires_gradient_sync``), and until then they accumulate *unsharded*.

Communication volume is what one rank sends per optimizer step with ring collectives:
all-reduce 2(W-1)/W x bytes, all-gather and reduce-scatter (W-1)/W x bytes each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from leantrain.errors import UserError
from leantrain.plan.meta_model import Setup, build_meta_model, layer_count, with_layers


@dataclass(frozen=True)
class Layout:
    """How many devices a run uses and how the model is spread over them."""

    nproc: int = 1                 # processes (one per device) on each node
    nodes: int = 1
    sharded: bool = False          # cuts.fsdp: FSDP2 instead of DDP
    reshard_after_forward: bool = True

    @classmethod
    def from_recipe(cls, recipe, nproc: int | None = None, nodes: int | None = None) -> "Layout":
        for flag, value in (("--nproc", nproc), ("--nodes", nodes)):
            if value is not None and value < 1:
                raise UserError(f"{flag}: must be at least 1 (got {value})")
        fsdp = recipe.enabled_cuts().get("fsdp")
        return cls(nproc or 1, nodes or 1, fsdp is not None, fsdp.reshard_after_forward if fsdp else True)

    @property
    def world_size(self) -> int:
        return self.nproc * self.nodes

    @property
    def strategy(self) -> str:
        if self.world_size == 1:
            return "single"
        return "fsdp" if self.sharded else "ddp"


@dataclass(frozen=True)
class Tensor:
    dim0: int
    numel: int
    itemsize: int
    trainable: bool

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def shard_bytes(self, world: int) -> int:
        """Bytes of one rank's dim-0 shard: FSDP2 pads dim 0 to a multiple of ``world``."""
        if self.dim0 == 0:
            return 0
        return math.ceil(self.dim0 / world) * (self.numel // self.dim0) * self.itemsize


@dataclass(frozen=True)
class Units:
    """The model as FSDP wraps it: groups of identical blocks (one per block class, e.g.
    BERT's embeddings and its layers) as (tensors of one block, count), plus the root's remainder."""

    groups: tuple[tuple[tuple[Tensor, ...], int], ...]
    root: tuple[Tensor, ...]
    buffer_bytes: int

    def _sum(self, world: int, trainable_only: bool, sharded: bool) -> int:
        size = (lambda t: t.shard_bytes(world)) if sharded else (lambda t: t.nbytes)  # noqa: E731
        pick = lambda ts: sum(size(t) for t in ts if t.trainable or not trainable_only)  # noqa: E731
        return sum(count * pick(block) for block, count in self.groups) + pick(self.root)

    def param_bytes(self, world: int = 1, trainable_only: bool = False) -> int:
        """Whole (world 1) or one rank's sharded parameter bytes."""
        return self._sum(world, trainable_only, sharded=world > 1)

    @property
    def blocks(self) -> int:
        return sum(count for _, count in self.groups)

    def unit_bytes(self, which: str, trainable_only: bool = False) -> int:
        """Whole bytes of the root's remainder (``root``) or of the largest block (``block``)."""
        size = lambda ts: sum(t.nbytes for t in ts if t.trainable or not trainable_only)  # noqa: E731
        if which == "root":
            return size(self.root)
        return max((size(block) for block, _ in self.groups), default=0)


_UNITS: dict[tuple, Units] = {}


def fsdp_units(config, task: str, setup: Setup) -> Units:
    """The model's FSDP units from a meta copy with at most two layers (the blocks of one
    class are identical, so the full depth follows by counting)."""
    key = (config.to_json_string(use_diff=False), task, setup.key(), str(setup.lora))
    if key in _UNITS:
        return _UNITS[key]
    depth = layer_count(config)
    small = with_layers(config, 2) if depth and depth > 2 else config
    model = build_meta_model(small, task, setup)
    # As the engine finds them (a PEFT wrapper passes the attribute through to its model).
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    blocks = [b for b in blocks if not any(o is not b and b in set(o.modules()) for o in blocks)]  # outermost only
    seen: set[int] = set()

    def tensors(module) -> tuple[Tensor, ...]:
        found = []
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                found.append(Tensor(p.shape[0] if p.dim() else 1, p.numel(), p.element_size(), p.requires_grad))
        return tuple(found)

    by_class: dict[str, list[tuple[Tensor, ...]]] = {}
    for block in blocks:
        by_class.setdefault(type(block).__name__, []).append(tensors(block))
    root = tensors(model)
    buffers = sum(b.numel() * b.element_size() for b in {id(b): b for b in model.buffers()}.values())
    scale = depth / 2 if depth and depth > 2 else 1  # per-layer classes occur a multiple of 2 times at depth 2
    groups = tuple((found[0], int(len(found) * scale) if len(found) % 2 == 0 else len(found)) for found in by_class.values())
    units = Units(groups, root, buffers)
    _UNITS[key] = units
    return units


def rank_memory(step, units: Units, layout: Layout, micro_batch: int, accumulation: int, overhead: float) -> dict[str, int]:
    """One rank's peak-memory breakdown (bytes). Single device and DDP: the step model's
    own figures (DDP's buckets are the gradients). FSDP: shards plus what is transiently
    whole: the root unit (gathered through the whole forward and backward) and two blocks
    (the running one and the prefetched next), or every unit when weights are not
    resharded after forward; the same for gradients until they are reduce-scattered, or
    all gradients whole while non-final micro-batches accumulate them unsharded."""
    parts = step.memory(micro_batch, overhead)
    parts.update(gathered_weights=0, gathered_gradients=0)
    if layout.strategy == "fsdp":
        world = layout.world_size
        params, trainable = units.param_bytes(), units.param_bytes(trainable_only=True)
        shard, shard_trainable = units.param_bytes(world), units.param_bytes(world, trainable_only=True)
        parts["weights"] = shard + units.buffer_bytes
        parts["gradients"] = shard_trainable
        parts["optimizer_states"] = round(parts["optimizer_states"] * shard_trainable / trainable) if trainable else 0
        in_flight = min(2, units.blocks)
        # The all-gather output is a new whole buffer (the shard is a view into it only
        # while it is being sent), so a gathered unit costs its full size.
        if layout.reshard_after_forward:
            parts["gathered_weights"] = units.unit_bytes("root") + in_flight * units.unit_bytes("block")
        else:
            parts["gathered_weights"] = params
        if accumulation > 1:
            parts["gathered_gradients"] = trainable  # accumulated unsharded until the last micro-batch
        else:
            parts["gathered_gradients"] = units.unit_bytes("root", True) + in_flight * units.unit_bytes("block", True)
    parts.pop("total")
    parts["total"] = sum(parts.values())
    return parts


def max_batch(step, units: Units, layout: Layout, accumulation: int, capacity: float, overhead: float,
              limit: int = 1 << 16) -> int:
    """The largest per-rank micro-batch whose peak fits in ``capacity`` (0: not even one)."""
    free = capacity - rank_memory(step, units, layout, 0, accumulation, overhead)["total"]
    per = step.per_sample_bytes()
    if free < per:
        return 0
    return min(limit, int(free // per)) if per > 0 else limit


def communication(units: Units, layout: Layout, accumulation: int) -> dict:
    """Bytes one rank sends per optimizer step, by collective, and the raw payloads."""
    world = layout.world_size
    grads = units.param_bytes(trainable_only=True)
    params = units.param_bytes()
    ring = (world - 1) / world
    result = {"strategy": layout.strategy, "world_size": world, "gradient_bytes": grads, "parameter_bytes": params}
    if layout.strategy == "ddp":
        parts = {"all_reduce_gradients": round(2 * ring * grads),
                 "broadcast_buffers": round(ring * units.buffer_bytes)}
        forward, backward = parts["broadcast_buffers"], parts["all_reduce_gradients"]
        backward_per_micro_batch = False
    elif layout.strategy == "fsdp":
        gather = round(ring * params) * accumulation
        parts = {"all_gather_forward": gather, "all_gather_backward": gather if layout.reshard_after_forward else 0,
                 "reduce_scatter_gradients": round(ring * grads)}
        forward, backward = gather, parts["all_gather_backward"] + parts["reduce_scatter_gradients"]
        backward_per_micro_batch = True
    else:
        parts, forward, backward, backward_per_micro_batch = {}, 0, 0, False
    result.update(bytes_per_step=sum(parts.values()), breakdown=parts, forward_bytes=forward, backward_bytes=backward,
                  overlaps_every_backward=backward_per_micro_batch)
    return result


def bus_bandwidth(acc, layout: Layout) -> tuple[float, str]:
    """(bytes/s, which link) a ring collective runs at: the per-device link inside a node,
    or, across nodes, the slower of that and the node's network (every ring crosses it)."""
    intra = acc.intra_node_gbps * 1e9
    if layout.nodes == 1:
        return intra, "intra-node"
    inter = acc.inter_node_gbps * 1e9
    return (inter, "inter-node network") if inter < intra else (intra, "intra-node")


def comm_timing(comm: dict, compute_seconds: float, forward_fraction: float, accumulation: int,
                bandwidth: float) -> dict:
    """Seconds per step spent communicating, and how much of it compute cannot hide.

    Overlap model: traffic issued in forward can hide behind forward compute, backward
    traffic behind backward compute, and only of the micro-batches that carry it (DDP's
    all-reduce rides the last micro-batch's backward; FSDP gathers on every one)."""
    if comm["bytes_per_step"] == 0 or bandwidth <= 0:
        return {"comm_seconds": 0.0, "exposed_comm_seconds": 0.0}
    comm_seconds = comm["bytes_per_step"] / bandwidth
    forward_compute = compute_seconds * forward_fraction
    backward_compute = compute_seconds - forward_compute
    if comm["strategy"] == "ddp":
        hidden_forward = 0.0  # the buffer broadcast precedes forward
        hidden_backward = min(comm["backward_bytes"] / bandwidth, backward_compute / accumulation)
    else:
        hidden_forward = min(comm["forward_bytes"] / bandwidth, forward_compute)
        hidden_backward = min(comm["backward_bytes"] / bandwidth, backward_compute)
    exposed = comm_seconds - hidden_forward - hidden_backward
    return {"comm_seconds": comm_seconds, "exposed_comm_seconds": exposed if exposed > 1e-9 * comm_seconds else 0.0}
