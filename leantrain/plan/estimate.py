"""A step's memory and FLOPs as functions of the micro-batch, from a few small traces.

Why a fitted model instead of one trace: the planner must answer "does batch b fit?"
for every b and every GPU, and a 32-block model need not be traced whole. Saved
activations, workspace and FLOPs are (to within a few bytes) linear in the number of
blocks and in the batch, so tracing at 1 and 2 blocks and at batch 1 and 2 and
interpolating bilinearly gives every (depth, batch) exactly. Parameter figures are linear
in depth too. Weights, gradients and optimizer states follow from the traced model's
parameters: gradients match each trainable parameter's dtype, AdamW keeps two states
of the same dtype per trainable parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from leantrain.plan.meta_model import Setup, layer_count, with_layers
from leantrain.plan.trace import StepTrace, trace_step

ADAMW_STATES = 2  # exp_avg and exp_avg_sq; the step counter is a scalar


@dataclass
class StepModel:
    """Memory and FLOPs of one setup; ``at(b)`` gives the micro-batch-b figures."""

    setup: Setup
    fixed: StepTrace        # batch-independent part (e.g. autocast weight copies saved for backward)
    per_sample: StepTrace   # added by each sample of a micro-batch
    recompute_flops_per_sample: int
    seq_len_memory: int
    seq_len_flops: int
    # With checkpointing: the activations one block saves when it is recomputed in backward
    # (batch-independent part, per sample). They live only while that block's backward
    # runs, so they compete with the step's largest transient rather than add to it.
    recomputed_block: tuple[float, float] = (0.0, 0.0)

    @property
    def params(self) -> dict[str, int]:
        return {"total": round(self.fixed.total_params), "trainable": round(self.fixed.trainable_params)}

    def state_bytes(self) -> dict[str, int]:
        trainable = self.fixed.trainable_bytes
        return {"weights": round(self.fixed.weights), "gradients": round(trainable), "optimizer_states": round(ADAMW_STATES * trainable)}

    def memory(self, micro_batch: int, overhead: float = 0.0) -> dict[str, int]:
        """Peak-memory breakdown in bytes at ``micro_batch``: the training state, the saved
        activations of one micro-batch, the transients (the largest op's output, which
        coexists with its gradient in backward, hence twice; or, with checkpointing, the
        recomputed block's activations when larger) and the framework's fixed overhead."""
        saved = self.fixed.saved_activations + micro_batch * self.per_sample.saved_activations
        largest = self.fixed.largest_op_bytes + micro_batch * self.per_sample.largest_op_bytes
        block = self.recomputed_block[0] + micro_batch * self.recomputed_block[1]
        parts = {**self.state_bytes(), "saved_activations": int(saved), "temporaries": int(max(2 * largest, block)),
                 "framework_overhead": int(overhead)}
        parts["total"] = sum(parts.values())
        return parts

    def accounted_bytes(self, micro_batch: int) -> int:
        """What the memory accountant measures on a run: state + saved activations."""
        m = self.memory(micro_batch)
        return m["weights"] + m["gradients"] + m["optimizer_states"] + m["saved_activations"]

    def ops_per_micro_batch(self) -> int:
        return round(self.fixed.ops + self.per_sample.ops)

    def per_sample_bytes(self) -> int:
        """Bytes each further sample adds at most (the larger transient slope: an upper bound
        where the two transients cross, so a batch said to fit does)."""
        transient = max(2 * self.per_sample.largest_op_bytes, self.recomputed_block[1])
        return int(self.per_sample.saved_activations + transient)

    def flops_per_sample(self) -> dict[str, int]:
        """FLOPs of one sample at the FLOP sequence length (forward, backward without and
        the recomputed forward of checkpointed blocks)."""
        forward = self.per_sample.forward_flops
        backward_total = self.per_sample.backward_flops
        recompute = self.recompute_flops_per_sample
        return {"forward": forward, "backward": backward_total - recompute, "recompute": recompute}

    def flops_per_step(self, effective_batch: int | None = None) -> dict[str, int]:
        batch = effective_batch or self.setup.effective_batch
        parts = {k: int(v * batch) for k, v in self.flops_per_sample().items()}
        parts["total"] = sum(parts.values())
        return parts


def _bilinear(points: dict[tuple[int, int], StepTrace], layers: int, batch: int) -> StepTrace:
    """Value at (layers, batch) from traces at layers {l0, l1} x batch {1, 2}."""
    depths = sorted({p[0] for p in points})
    l0, l1 = depths[0], depths[-1]

    def at_batch(b: int, layer: int) -> StepTrace:
        low, high = points[(layer, 1)], points[(layer, 2)]
        return low.combine(high, lambda x, y: x + (b - 1) * (y - x))

    if l0 == l1:
        return at_batch(batch, l0)
    low, high = at_batch(batch, l0), at_batch(batch, l1)
    return low.combine(high, lambda x, y: x + (layers - l0) * (y - x) / (l1 - l0))


def _depths(config) -> tuple[int | None, tuple[int, ...]]:
    total = layer_count(config)
    if total is None or total <= 2:
        return None, (0,)   # shallow enough to trace as it is
    return total, (1, 2)


_TRACES: dict[tuple, StepTrace] = {}


def _setup_key(setup: Setup) -> tuple:
    dump = lambda cfg: cfg.model_dump_json() if cfg is not None else None  # noqa: E731
    return (dump(setup.lora), dump(setup.checkpointing), setup.dtype, setup.frozen_dtype, dump(setup.quantized_base),
            setup.cpu_matmul_attention)


def _trace(config, task: str, setup: Setup, layers: int, batch: int, seq_len: int, kind: str) -> StepTrace:
    # Cached by everything that shapes a trace: the recommendation search asks for the
    # same ones repeatedly (and tests plan the same tiny model many times). ``kind`` is
    # "memory" or "flops"; a trace of both kinds serves either.
    base = (config.to_json_string(use_diff=False), task, _setup_key(setup), layers, batch, seq_len)
    for held in (kind, "both"):
        if base + (held,) in _TRACES:
            return _TRACES[base + (held,)]
    _TRACES[base + (kind,)] = trace_step(with_layers(config, layers) if layers else config, task, setup, batch, seq_len,
                                         memory=kind != "flops", flops=kind != "memory")
    return _TRACES[base + (kind,)]


def fit_points(config, task: str, setup: Setup, seq_len: int, batches: tuple[int, ...] = (1, 2),
               kind: str = "memory") -> tuple[StepTrace, StepTrace]:
    """(fixed, per-sample) parts of a step at ``seq_len`` for the full depth. With
    ``batches=(1,)`` everything is taken as per-sample (right for FLOPs, which have no
    batch-independent part), at half the tracing cost."""
    total, depths = _depths(config)
    points = {(d, b): _trace(config, task, setup, d, b, seq_len, kind if b == 1 else "memory") for d in depths for b in batches}
    if batches == (1,):
        points.update({(d, 2): points[(d, 1)].combine(points[(d, 1)], lambda x, y: 2 * x) for d in depths})
    if total is None:
        points = {(1, b): v for (d, b), v in points.items()}
        total = 1
    one, two = _bilinear(points, total, 1), _bilinear(points, total, 2)
    per_sample = one.combine(two, lambda x, y: y - x)
    fixed = one.combine(per_sample, lambda x, y: x - y)
    return fixed, per_sample


def model_step(config, task: str, setup: Setup, seq_len_memory: int, seq_len_flops: int) -> StepModel:
    """The fitted step model of ``setup``: memory at ``seq_len_memory`` (the longest
    batch sets the peak), FLOPs at ``seq_len_flops`` (the mean padded length sets the time)."""
    same = seq_len_flops == seq_len_memory
    fixed, per_sample = fit_points(config, task, setup, seq_len_memory, kind="both" if same else "memory")
    # FLOPs have no batch-independent part: batch 1 suffices (the "both" trace when the lengths agree).
    flops = fit_points(config, task, setup, seq_len_flops, batches=(1,), kind="flops")[1]
    recompute, block = 0, (0.0, 0.0)
    if setup.checkpointing is not None:
        plain_setup = replace(setup, checkpointing=None, micro_batch=1, accumulation=1)
        plain = fit_points(config, task, plain_setup, seq_len_flops, batches=(1,), kind="flops")[1]
        recompute = max(0, int(flops.backward_flops - plain.backward_flops))
        block = recomputed_block(config, task, plain_setup, seq_len_memory)
    per_sample = StepTrace(
        saved_activations=per_sample.saved_activations, largest_op_bytes=per_sample.largest_op_bytes,
        forward_flops=flops.forward_flops, backward_flops=flops.backward_flops,
        total_params=0, trainable_params=0, weights=0, trainable_bytes=0, ops=0,
    )
    return StepModel(setup, fixed, per_sample, recompute, seq_len_memory, seq_len_flops, block)


def recomputed_block(config, task: str, plain_setup: Setup, seq_len: int) -> tuple[float, float]:
    """(batch-independent, per-sample) bytes one block saves without checkpointing: what a
    checkpointed block holds again while its backward runs. The saved-tensor counter sees
    only the forward, so without this a checkpointed step missed that block entirely (on a
    Llama-2-7B QLoRA step with adapters on every Linear, 2.7 GiB at 4 x 2048 tokens)."""
    saved = {(d, b): _trace(config, task, plain_setup, d, b, seq_len, "memory").saved_activations
             for d in (1, 2) for b in (1, 2)}
    one, two = saved[(2, 1)] - saved[(1, 1)], saved[(2, 2)] - saved[(1, 2)]
    return max(0.0, 2 * one - two), max(0.0, two - one)
