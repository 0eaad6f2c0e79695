"""Early stopping: stop paying once the eval metric stops improving, keep the best weights.

Why: runs are routinely left going long after validation loss flattened; every step
after that is money spent on nothing (or on overfitting). The best weights seen are
kept in memory (only the trainable ones: with LoRA that is a few hundred KB) and put
back when training ends. With ``target`` set it also stops at the first evaluation that
reaches a goal: the recipe `leantrain tune` returns uses it, so running that recipe stops
where the search measured its cost (with the same schedule), not at the end of its epochs.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

HIGHER_IS_BETTER = ("accuracy", "f1", "precision", "recall", "auc", "exact_match", "contains", "margin")


class EarlyStoppingSettings(CutConfig):
    metric: str = Field("loss", description="Eval metric to watch (e.g. loss, accuracy, perplexity).")
    mode: Literal["auto", "min", "max"] = Field("auto", description="Whether lower or higher is better; auto: max for accuracy-like metrics, else min.")
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")
    restore_best: bool = Field(True, description="Put back the best weights when training ends.")
    target: float | None = Field(None, description="Also stop at the first evaluation whose metric reaches this value "
                                 "(at least it when higher is better, at most it otherwise).")


class EarlyStopping(Cut):
    name = "early_stopping"
    Config = EarlyStoppingSettings
    summary = "Stop after `patience` evaluations without improvement; restore the best weights."
    order = 60

    def __init__(self, config: EarlyStoppingSettings):
        super().__init__(config)
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def setup(self, run) -> None:
        if run.eval_rows == 0:
            raise UserError("cuts.early_stopping needs eval data to watch: set data.eval, or data.eval_fraction above 0")

    @property
    def maximize(self) -> bool:
        if self.config.mode != "auto":
            return self.config.mode == "max"
        return self.config.metric.lower().endswith(HIGHER_IS_BETTER)

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = value - self.best if self.maximize else self.best - value
        return delta > self.config.min_delta

    def on_eval_end(self, metrics: dict[str, float], run) -> str | None:
        metric = self.config.metric
        if metric not in metrics:
            raise UserError(f"cuts.early_stopping.metric: {metric!r} is not an eval metric; have {', '.join(metrics)}")
        value = metrics[metric]
        if self.improved(value):
            self.best, self.best_step, self.bad_evals = value, run.state.step, 0
            if self.config.restore_best and run.model is not None:
                self.best_weights = {
                    n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad
                }
            target = self.config.target
            if target is not None and (value >= target if self.maximize else value <= target):
                return f"{metric} reached the target {target} ({value:.4f} at step {run.state.step})"
            return None
        self.bad_evals += 1
        if self.bad_evals >= self.config.patience:
            return (
                f"{metric} did not improve by more than {self.config.min_delta} for {self.bad_evals} "
                f"evaluations (best {self.best:.4f} at step {self.best_step})"
            )
        return None

    def on_fit_end(self, run) -> bool:
        if not (self.config.restore_best and self.best_weights) or self.best_step == run.state.step:
            return False  # the current weights are the best ones
        params = dict(run.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_weights.items():
                params[name].copy_(value)
        run.extras["restored_best_step"] = self.best_step
        run.extras["best_" + self.config.metric] = self.best
        return True

    def state_dict(self) -> dict:
        # The best weights are part of the state: a resumed run must restore the same ones.
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_step = state.get("best_step")
        self.bad_evals = state.get("bad_evals", 0)
        self.best_weights = state.get("best_weights")


register(EarlyStopping)
