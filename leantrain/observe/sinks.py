"""Copies of metrics.jsonl for the tools users already run: TensorBoard and MLflow.

metrics.jsonl stays the source of truth (resume cuts it back, reports and the dashboard
read it); a sink only mirrors each record as it is written. Numeric fields become
scalars named ``<event>/<field>`` (``train/loss``, ``eval/accuracy``) at the record's step.
"""
from __future__ import annotations

from pathlib import Path

from leantrain.errors import UserError

# Bookkeeping fields that are not curves worth a chart.
NOT_SCALARS = {"step", "epoch", "total_steps"}


def scalars(record: dict) -> dict[str, float]:
    event = record.get("event", "event")
    return {f"{event}/{k}": float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    """Event files in ``RUN_DIR/tensorboard``: ``tensorboard --logdir runs`` shows every run."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the `tensorboard` package
            raise UserError("output.tensorboard is true but the `tensorboard` package is not installed: "
                            "pip install tensorboard, or set output.tensorboard: false") from exc
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record.get("step", 0))
        if record.get("event") in ("eval", "final_eval", "train"):
            self.writer.flush()  # a live TensorBoard sees each logged step

    def close(self) -> None:
        self.writer.close()


def load_mlflow():
    """The mlflow module, imported only when a recipe asks for it (it is not a dependency)."""
    try:
        import mlflow
    except ImportError as exc:
        raise UserError("output.mlflow is true but `mlflow` is not installed: pip install mlflow, "
                        "or set output.mlflow: false") from exc
    return mlflow


class MLflowSink:
    """One MLflow run per leantrain run, in the tracking store MLflow is configured for
    (``MLFLOW_TRACKING_URI``; by default ``./mlruns``)."""

    def __init__(self, run_name: str, params: dict[str, str]):
        mlflow = load_mlflow()
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params(params)

    def write(self, record: dict) -> None:
        values = scalars(record)
        if values:
            # MLflow metric names may not contain every character; '/' is allowed.
            self.mlflow.log_metrics(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.mlflow.end_run()


def _flat(prefix: str, value, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)[:500]  # MLflow caps parameter values


def open_sinks(recipe, run_dir: Path) -> list:
    """The sinks the recipe's ``output`` section asks for."""
    sinks: list = []
    if recipe.output.tensorboard:
        sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard"))
    if recipe.output.mlflow:
        params: dict[str, str] = {}
        _flat("", recipe.model_dump(mode="json"), params)
        sinks.append(MLflowSink(Path(run_dir).name, params))
    return sinks
