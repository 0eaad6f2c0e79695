"""`leantrain launch` writes a SkyPilot task that resumes after preemption."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml

from leantrain.cli import main

REPO = Path(__file__).resolve().parents[2]


def _launch(tmp_path, monkeypatch, *extra: str) -> tuple[dict, str]:
    monkeypatch.chdir(REPO)
    out = tmp_path / "sky.yaml"
    assert main(["launch", "examples/demo.yaml", "--cloud", "aws", "--output", str(out), *extra]) == 0
    return yaml.safe_load(out.read_text(encoding="utf-8")), str(out)


def test_spot_task_mounts_the_run_directory_and_resumes(tmp_path, monkeypatch, capsys, topic_csv):
    # The planner counts the data's tokens: point it at a file that exists on a fresh clone.
    task, path = _launch(tmp_path, monkeypatch, "--gpu", "A10G", "--spot", "--nodes", "2",
                         "--set", f"data.train={topic_csv}")
    assert task["resources"]["use_spot"] is True
    assert task["resources"]["accelerators"] == "A10G:1" and task["num_nodes"] == 2
    run = task["run"]
    assert "--resume auto" in run and "examples/demo.yaml" in run
    for variable in ("SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS", "SKYPILOT_NUM_GPUS_PER_NODE", "SKYPILOT_NUM_NODES"):
        assert variable in run
    # The run directory is inside the mounted bucket, so a recovered job finds its checkpoints.
    (mount_point, mount), = task["file_mounts"].items()
    assert f"output.dir={mount_point}/demo" in run and mount["store"] == "s3"
    assert "pip install leantrain" in task["setup"]
    out = capsys.readouterr().out
    assert f"sky jobs launch {path}" in out
    # The planner's cost for the whole job: both nodes' devices, DDP's communication included.
    assert "planned run:" in out and "on 2 device(s) (ddp" in out


def test_cpu_task_installs_the_cpu_torch_and_on_demand_has_no_spot(tmp_path, monkeypatch):
    task, _ = _launch(tmp_path, monkeypatch)
    assert task["resources"]["use_spot"] is False and "accelerators" not in task["resources"]
    assert "download.pytorch.org/whl/cpu" in task["setup"]


def test_cost_comes_from_the_price_catalog_when_it_is_there(tmp_path, monkeypatch, capsys):
    catalog = types.ModuleType("leantrain.plan.catalog")
    catalog.hourly_price = lambda name, spot=False: {"A10G": 1.0}[name] * (0.25 if spot else 1.0)
    monkeypatch.setitem(sys.modules, "leantrain.plan", types.ModuleType("leantrain.plan"))
    monkeypatch.setitem(sys.modules, "leantrain.plan.catalog", catalog)
    _launch(tmp_path, monkeypatch, "--gpu", "A10G:4", "--nodes", "2", "--spot")
    assert "$8.00/h on demand, $2.00/h on spot" in capsys.readouterr().out  # 8 devices

    monkeypatch.setitem(sys.modules, "leantrain.plan.catalog", None)  # not installed: no failure
    _launch(tmp_path, monkeypatch, "--gpu", "A10G", "--spot")
    assert "price catalog is not available" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--cloud", "moon"], "--cloud 'moon': allowed values are aws"),
    (["--cloud", "aws", "--gpu", "A10G:x"], "--gpu 'A10G:x'"),
    (["--cloud", "aws", "--nodes", "0"], "--nodes 0"),
])
def test_bad_options_fail_in_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(REPO)
    assert main(["launch", "examples/demo.yaml", "--output", str(tmp_path / "sky.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_recipe_outside_the_uploaded_folder_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["launch", str(REPO / "examples" / "demo.yaml"), "--cloud", "aws"]) == 2
    assert "must be inside the current directory" in capsys.readouterr().err


def test_task_round_trips_through_skypilot(tmp_path, monkeypatch):
    sky = pytest.importorskip("sky", reason="SkyPilot is not installed (optional extra `skypilot`)")
    task, path = _launch(tmp_path, monkeypatch, "--gpu", "A10G", "--spot", "--nodes", "2")
    parsed = sky.Task.from_yaml(path)
    (resources,) = parsed.resources
    assert parsed.num_nodes == 2 and resources.use_spot and resources.accelerators == {"A10G": 1}
    assert "--resume auto" in parsed.run
    assert list(parsed.storage_mounts) == list(task["file_mounts"])


def test_train_nproc_exits_like_the_run_not_like_torchrun(tmp_path):
    """torchrun exits 1 when a rank was preempted; `leantrain train --nproc` reports what
    the run's summary says, so a preempted job still exits 143 for its supervisor."""
    import json

    from leantrain.launch.torchrun import exit_code_of

    (tmp_path / "summary.json").write_text(json.dumps({"status": "preempted", "signal": "SIGTERM"}))
    assert exit_code_of(tmp_path, 1) == 143
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert exit_code_of(tmp_path, 0) == 0
    (tmp_path / "summary.json").write_text(json.dumps({"status": "diverged"}))
    assert exit_code_of(tmp_path, 1) == 3
    (tmp_path / "summary.json").unlink()
    assert exit_code_of(tmp_path, 1) == 1  # no summary: the run never started; torchrun's word


def test_launch_says_why_it_has_no_planned_cost(tmp_path, monkeypatch, capsys):
    _launch(tmp_path, monkeypatch, "--gpu", "A10G", "--set", f"data.train={tmp_path / 'missing.csv'}")
    out = capsys.readouterr().out
    assert "planned run: no estimate (" in out and "missing.csv" in out
