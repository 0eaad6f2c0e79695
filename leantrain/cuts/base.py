"""The one abstraction every cost cut shares.

A Cut is a recipe section plus a handful of hook methods. The training loop only ever
calls the hooks through :class:`CutStack`; it never names a technique. Adding a cut means
writing one module in ``leantrain/cuts/`` that subclasses :class:`Cut` and decorates it
with :func:`register`; nothing else changes.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from leantrain.engine.context import RunContext

REGISTRY: dict[str, type["Cut"]] = {}


class CutConfig(BaseModel):
    """Base for a cut's recipe section. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Turn the cut on or off; `cuts.NAME: true` alone enables it with defaults.")

    # The field a bare scalar sets, e.g. ``precision: bf16`` means ``{dtype: bf16}``.
    shorthand_field: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        # ``lora: true`` turns a cut on with its defaults; ``lora: false`` turns it off.
        if isinstance(value, bool):
            return {"enabled": value}
        if value is not None and not isinstance(value, dict) and cls.shorthand_field:
            return {cls.shorthand_field: value}
        return value


class Cut:
    """A cost cut. Override only the hooks you need; every default is a no-op.

    Hooks, in the order the loop calls them:
      setup(run)                      check the device, adjust the run plan
      order_batches(batches, epoch, run, lengths)  the order of an epoch's batches (curriculum)
      prepare_model(model, run)       wrap or modify the model (PEFT, checkpointing, casts)
      forward_context(run)            a context manager around forward + loss (autocast)
      adjust_example_losses(losses, batch, run)  change each example's loss (distillation)
      example_weights(indices, run)   per-example loss weights (importance sampling), or None
      on_example_losses(indices, losses, run)  each example's loss, detached (loss-aware samplers)
      scale_loss(loss, run)           change the loss before backward (grad scaling)
      on_before_optimizer_step(opt, run)  gradients are complete (unscale before clipping)
      optimizer_step(optimizer, run)  take over the optimizer step; return True if done
      on_skipped_step(run)            the update was skipped for a NaN/Inf (fp16 rescales)
      on_step_end(run)                after every optimizer step
      on_eval_end(metrics, run)       after evaluation; return a reason string to stop
      on_fit_end(run) -> bool         training is over; True if it changed the weights
      on_save(model, out_dir, run)    extra artefacts next to the saved model
      state_dict() / load_state_dict  the cut's own state, for checkpoints
    """

    name: ClassVar[str]
    Config: ClassVar[type[CutConfig]]
    summary: ClassVar[str] = ""
    # Cuts run in ascending order: model wrappers (LoRA) before what acts on the wrapped
    # model (checkpointing, dtype casts), step-level cuts after.
    order: ClassVar[int] = 50
    # Other cuts this one needs in the same recipe, and those it cannot run with (name ->
    # why): checked when the run starts, before any data or model work is wasted.
    # On unless a recipe turns it off: only for cuts that never change what is learned
    # and that pay on every device they act on (each one's card gives the benchmark).
    default_on: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[dict[str, str]] = {}

    def __init__(self, config: CutConfig):
        self.config = config

    def setup(self, run: "RunContext") -> None:
        pass

    def order_batches(self, batches: list[list[int]], epoch: int, run: "RunContext",
                      lengths: list[int] | None) -> list[list[int]]:
        """Reorder an epoch's batches (index lists); must be a pure function of its inputs."""
        return batches

    def prepare_model(self, model: torch.nn.Module, run: "RunContext") -> torch.nn.Module:
        return model

    def forward_context(self, run: "RunContext") -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def adjust_example_losses(self, losses: torch.Tensor, batch, run: "RunContext") -> torch.Tensor:
        """Each example's training loss, given the task's (e.g. mixed with a teacher's)."""
        return losses

    def example_weights(self, indices: torch.Tensor, run: "RunContext") -> torch.Tensor | None:
        """Weights for the losses of the examples at ``indices``; None means all 1."""
        return None

    def on_example_losses(self, indices: torch.Tensor, losses: torch.Tensor, run: "RunContext") -> None:
        """Each example's (unweighted, detached) loss, as the forward pass computed it."""

    def scale_loss(self, loss: torch.Tensor, run: "RunContext") -> torch.Tensor:
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer, run: "RunContext") -> None:
        pass

    def optimizer_step(self, optimizer: torch.optim.Optimizer, run: "RunContext") -> bool:
        return False

    def on_skipped_step(self, run: "RunContext") -> bool:
        """The update was skipped (NaN/Inf). Return True if this cut expects such skips."""
        return False

    def on_step_end(self, run: "RunContext") -> None:
        pass

    def on_eval_end(self, metrics: dict[str, float], run: "RunContext") -> str | None:
        return None

    def on_fit_end(self, run: "RunContext") -> bool:
        """Training is over. Return True if this changed the weights (e.g. restored a best)."""
        return False

    def on_save(self, model: torch.nn.Module, out_dir, run: "RunContext") -> dict[str, str]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def check_combination(names: list[str]) -> None:
    """Raise a one-line UserError when the enabled cuts ``names`` cannot run together."""
    from leantrain.errors import UserError

    for name in names:
        cls = REGISTRY[name]
        for needed in cls.requires:
            if needed not in names:
                raise UserError(f"cuts.{name}: needs cuts.{needed} in the same recipe")
        for other, why in cls.conflicts.items():
            if other in names:
                raise UserError(f"cuts.{name}: cannot run with cuts.{other}: {why}; turn one of them off")


def register(cls: type[Cut]) -> type[Cut]:
    """Class decorator: make a cut known to the recipe schema and the loop."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"two cuts are registered as {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


class CutStack:
    """The enabled cuts of one run, sorted by `order`, called as one.

    Run instruments (memory accounting, later cost metering) use the same hooks and ride
    in the same stack; ``names()`` lists only the recipe's cuts.
    """

    def __init__(self, cuts: list[Cut]):
        self.cuts = sorted(cuts, key=lambda c: c.order)

    def __iter__(self) -> Iterator[Cut]:
        return iter(self.cuts)

    def names(self) -> list[str]:
        return [c.name for c in self.cuts if REGISTRY.get(c.name) is type(c)]

    def setup(self, run) -> None:
        for cut in self.cuts:
            cut.setup(run)

    def prepare_model(self, model, run):
        for cut in self.cuts:
            model = cut.prepare_model(model, run)
        return model

    def order_batches(self, batches, epoch, run, lengths):
        for cut in self.cuts:
            batches = cut.order_batches(batches, epoch, run, lengths)
        return batches

    @contextlib.contextmanager
    def forward_context(self, run):
        with contextlib.ExitStack() as stack:
            for cut in self.cuts:
                stack.enter_context(cut.forward_context(run))
            yield

    def adjust_example_losses(self, losses, batch, run):
        for cut in self.cuts:
            losses = cut.adjust_example_losses(losses, batch, run)
        return losses

    def example_weights(self, indices, run):
        weights = None
        for cut in self.cuts:
            if (w := cut.example_weights(indices, run)) is not None:
                weights = w if weights is None else weights * w
        return weights

    def on_example_losses(self, indices, losses, run) -> None:
        for cut in self.cuts:
            cut.on_example_losses(indices, losses, run)

    def scale_loss(self, loss, run):
        for cut in self.cuts:
            loss = cut.scale_loss(loss, run)
        return loss

    def on_before_optimizer_step(self, optimizer, run) -> None:
        for cut in self.cuts:
            cut.on_before_optimizer_step(optimizer, run)

    def optimizer_step(self, optimizer, run) -> None:
        owners = [c for c in self.cuts if c.optimizer_step(optimizer, run)]
        if len(owners) > 1:
            raise RuntimeError(f"cuts {[c.name for c in owners]} all stepped the optimizer")
        if not owners:
            optimizer.step()

    def on_skipped_step(self, run) -> bool:
        return any([cut.on_skipped_step(run) for cut in self.cuts])  # a list: call every cut

    def on_step_end(self, run) -> None:
        for cut in self.cuts:
            cut.on_step_end(run)

    def on_eval_end(self, metrics, run) -> str | None:
        reasons = [r for c in self.cuts if (r := c.on_eval_end(metrics, run))]
        return reasons[0] if reasons else None

    def on_fit_end(self, run) -> bool:
        return any([cut.on_fit_end(run) for cut in self.cuts])  # a list: call every cut

    def on_save(self, model, out_dir, run) -> dict[str, str]:
        saved: dict[str, str] = {}
        for cut in self.cuts:
            saved.update(cut.on_save(model, out_dir, run))
        return saved

    def state_dict(self) -> dict[str, Any]:
        return {c.name: c.state_dict() for c in self.cuts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cut in self.cuts:
            cut.load_state_dict(state.get(cut.name, {}))
