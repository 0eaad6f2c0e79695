"""Distributed training on CPU with 2 processes (gloo), started by torchrun as a user would.

One module fixture starts every torchrun job at once (they are dominated by process
start-up on a small machine) and the single-process runs they are compared with run
in this process.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import leantrain

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402

SIGTERM_EXIT = 143


def _spec(folder: Path, **values) -> Path:
    (folder / "out").mkdir(parents=True, exist_ok=True)
    spec = {"run_dir": str(folder / "run"), "out": str(folder / "out"), "epochs": 2, **values}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def _torchrun(spec: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(leantrain.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "ddp_worker.py"), str(spec)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((folder / "out").glob("seen-rank*.json"))]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # A single-process run stopped by SIGTERM mid-epoch, to be resumed on 2 ranks.
    first = ddp_worker.run(json.loads(_spec(root / "grow-1", run_dir=str(root / "grow" / "run"), kill_at=3).read_text()))
    assert first["status"] == "preempted"
    # One process accumulating 2, stopped after its second step, to be resumed on 2 ranks with FSDP.
    first = ddp_worker.run(json.loads(_spec(root / "fsdp-1", run_dir=str(root / "fsdp" / "run"), accumulation=2,
                                            kill_at=3).read_text()))
    assert first["status"] == "preempted"
    specs = {
        "ddp": _spec(root / "ddp"),                                     # 2 ranks, start to finish
        "shrink": _spec(root / "shrink", kill_at=6, kill_rank=1),        # SIGTERM to rank 1 only
        "grow": _spec(root / "grow-2", run_dir=str(root / "grow" / "run"), resume="auto"),
        "fsdp": _spec(root / "fsdp-2", run_dir=str(root / "fsdp" / "run"), resume="auto", fsdp=True),
    }
    started = {name: _torchrun(spec) for name, spec in specs.items()}
    # Meanwhile, the reference: one process accumulating 2 micro-batches, uninterrupted.
    reference = ddp_worker.run(json.loads(_spec(root / "reference", accumulation=2).read_text()))
    assert reference["status"] == "completed"
    results = {}
    for name, process in started.items():
        output, _ = process.communicate(timeout=300)
        results[name] = (process.returncode, output)
    return root, results


def _reference_weights(root: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(root / "reference" / "run" / "model" / "model.safetensors"))
    initial = ddp_worker.make_model().state_dict()
    assert any(not torch.equal(weights[k], initial[k]) for k in weights)  # it trained
    return weights


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _assert_each_example_once_per_epoch(records: list[dict]) -> None:
    for epoch in (0, 1):
        counts = collections.Counter(i for r in records for e, ids in r["seen"] if e == epoch for i in ids)
        assert sorted(counts) == list(range(ddp_worker.N_EXAMPLES)), f"epoch {epoch}: examples missing"
        assert set(counts.values()) == {1}, f"epoch {epoch}: repeated {[i for i, c in counts.items() if c > 1]}"


def test_two_ranks_give_the_weights_of_one_process_accumulating_two(jobs):
    root, results = jobs
    code, output = results["ddp"]
    assert code == 0, output[-3000:]
    records = _records(root / "ddp")
    assert [r["world_size"] for r in records] == [2, 2]
    _assert_each_example_once_per_epoch(records)  # disjoint shares covering the data
    assert records[0]["steps"] == json.loads((root / "reference" / "run" / "summary.json").read_text())["steps"]
    distributed = load_file(str(root / "ddp" / "run" / "model" / "model.safetensors"))
    assert _max_difference(distributed, _reference_weights(root)) <= 1e-5
    summary = json.loads((root / "ddp" / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["cost_usd"] == pytest.approx(summary["price_per_hour"] * 2 * summary["train_seconds"] / 3600, abs=1e-6)


def test_sigterm_to_one_rank_stops_both_at_one_step_and_resumes_on_one_process(jobs):
    root, results = jobs
    code, output = results["shrink"]
    assert code != 0, output[-3000:]  # torchrun reports the preempted workers
    records = _records(root / "shrink")
    assert [r["status"] for r in records] == ["preempted", "preempted"]
    assert records[0]["steps"] == records[1]["steps"] and [r["signal"] for r in records] == ["SIGTERM"] * 2
    latest = (root / "shrink" / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{records[0]['steps']:09d}"

    resumed = ddp_worker.run(json.loads(_spec(root / "shrink-resumed", run_dir=str(root / "shrink" / "run"),
                                              resume="auto").read_text()))
    assert resumed["status"] == "completed" and resumed["world_size"] == 1
    assert resumed["resumed_from_steps"] == [records[0]["steps"]]
    _assert_each_example_once_per_epoch(records + _records(root / "shrink-resumed"))


def test_one_process_run_resumes_on_two_ranks(jobs):
    root, results = jobs
    code, output = results["grow"]
    assert code == 0, output[-3000:]
    records = _records(root / "grow-2")
    assert [r["status"] for r in records] == ["completed", "completed"]
    summary = json.loads((root / "grow" / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["resumed_from_steps"]) == 1
    _assert_each_example_once_per_epoch(_records(root / "grow-1") + records)


def test_fsdp_resumes_a_one_process_run_and_matches_it(jobs):
    """FSDP loads a whole checkpoint into shards, trains, and gathers the shards whole
    for the checkpoint and the saved model: the weights are those of one process."""
    root, results = jobs
    code, output = results["fsdp"]
    assert code == 0, output[-3000:]
    records = _records(root / "fsdp-2")
    assert [r["status"] for r in records] == ["completed", "completed"]
    _assert_each_example_once_per_epoch(_records(root / "fsdp-1") + records)
    reference = _reference_weights(root)
    run_dir = root / "fsdp" / "run"
    assert _max_difference(load_file(str(run_dir / "model" / "model.safetensors")), reference) <= 1e-5
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    saved = {k.removeprefix("model.param."): v for k, v in load_file(str(latest / "tensors.safetensors")).items()
             if k.startswith("model.param.")}
    assert _max_difference(saved, reference) <= 1e-5
    # Its optimizer state, gathered by parameter name, loads back into one process.
    again = ddp_worker.run(json.loads(_spec(root / "fsdp-3", run_dir=str(run_dir), resume=str(latest)).read_text()))
    assert again["status"] == "completed" and again["steps"] == records[0]["steps"]
