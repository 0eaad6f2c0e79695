"""A preempted run resumes with exactly the examples it would have seen, and a signal
during data preparation stops the run before training, cleanly."""
from __future__ import annotations

import json
import os
import signal

import torch

from leantrain import train


def _examples(n: int = 40):
    gen = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(n, 6, generator=gen), torch.randint(0, 2, (n,), generator=gen)
    return [{"x": xs[i], "y": ys[i], "id": torch.tensor(i)} for i in range(n)]


def _run(tmp_path, seen: list, kill_at: int | None, resume: str | None = None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    calls = {"n": 0}

    def loss_fn(m, batch):
        if m.training:
            calls["n"] += 1
            seen.extend(batch["id"].tolist())
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGTERM)  # a spot preemption, mid-epoch
        return torch.nn.functional.cross_entropy(m(batch["x"]), batch["y"])

    recipe = {"train": {"epochs": 3, "batch_size": 4, "seed": 5, "lr": 1e-2, "checkpoint_every": 100},
              "output": {"dir": str(tmp_path / "run")}}
    return train(recipe, model=model, loss_fn=loss_fn, train_data=_examples(), eval_data=_examples(8),
                 show_progress=False, resume=resume)


def test_resumed_run_sees_the_same_example_sequence_without_replay(tmp_path):
    uninterrupted: list[int] = []
    reference = _run(tmp_path / "a", uninterrupted, kill_at=None)
    first: list[int] = []
    stopped = _run(tmp_path / "b", first, kill_at=13)  # step 13 of 30: mid second epoch
    assert stopped.summary["status"] == "preempted" and stopped.summary["steps"] == 13
    rest: list[int] = []
    resumed = _run(tmp_path / "b", rest, kill_at=None, resume="auto")
    assert resumed.summary["status"] == "completed"
    assert first + rest == uninterrupted  # same order, nothing replayed, nothing skipped
    ref = dict(reference.model.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in resumed.model.named_parameters())


def test_signal_during_data_preparation_stops_before_training(tmp_path, tiny_recipe, monkeypatch):
    import leantrain.data.text as text
    import leantrain.models as models

    monkeypatch.setattr(text, "TOKENIZE_CHUNK", 8)  # several chunks: a safe point between each
    real_load = models.load_tokenizer

    class SignalOnFirstCall:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return self.inner(*args, **kwargs)

    monkeypatch.setattr(models, "load_tokenizer", lambda cfg: SignalOnFirstCall(real_load(cfg)))
    tiny_recipe["data"]["cache"] = False
    result = train(tiny_recipe, show_progress=False)
    assert result.summary["status"] == "preempted" and result.summary["steps"] == 0
    assert "data preparation" in result.summary["stop_reason"]
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["status"] == "preempted" and on_disk["signal"] == "SIGTERM"


def test_resume_from_an_explicit_checkpoint_folder_and_refuse_a_damaged_one(tmp_path):
    import pytest

    from leantrain.engine.checkpoint import CheckpointError

    uninterrupted: list[int] = []
    _run(tmp_path / "a", uninterrupted, kill_at=None)
    first: list[int] = []
    _run(tmp_path / "b", first, kill_at=13)
    folder = tmp_path / "b" / "run" / "checkpoints" / "step-000000013"
    rest: list[int] = []
    resumed = _run(tmp_path / "b", rest, kill_at=None, resume=str(folder))
    assert resumed.summary["status"] == "completed" and resumed.summary["resumed_from_steps"] == [13]
    assert first + rest == uninterrupted

    damaged = tmp_path / "b" / "run" / "checkpoints" / "step-000000030"
    (damaged / "tensors.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        _run(tmp_path / "b", [], kill_at=None, resume=str(damaged))
