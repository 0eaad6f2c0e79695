"""bench/gpu_check.py on a machine without a GPU: it must skip cleanly (CI runs here), and
its runner must report a broken check without losing the others (what it is for on a GPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_without_cuda_it_prints_one_skip_line_and_exits_0(tmp_path):
    out = tmp_path / "lines.jsonl"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a GPU machine running the suite skips too
    done = subprocess.run([sys.executable, str(SCRIPT), "--json-out", str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    line = json.loads(lines[0])
    assert line["check"] == "cuda" and line["skipped"] is True and "no CUDA device" in line["reason"]
    assert [json.loads(x) for x in out.read_text().splitlines()] == [line]


def _fake_checks(gpu_check, ran: list[str]):
    def good(ctx):
        ran.append("good")
        return {"step_seconds": 0.1}

    def broken(ctx):
        ran.append("broken")
        raise RuntimeError("CUDA error: an illegal memory access\nwith a long traceback-like second line")

    def missing(ctx):
        ran.append("missing")
        raise gpu_check.Skip("bitsandbytes is not installed")

    def wrong(ctx):
        ran.append("wrong")
        raise gpu_check.CheckFailed("predicted 10.0 MiB, measured 20.0 MiB", {"error_pct": -50.0})

    return [("good", good), ("broken", broken), ("missing", missing), ("wrong", wrong), ("after", good)]


def test_a_failing_check_is_reported_and_the_others_still_run(gpu_check, tmp_path):
    ran, lines = [], []
    ok = gpu_check.run_checks(_fake_checks(gpu_check, ran), gpu_check.Context("cpu", tmp_path), lines.append)
    assert ok is False
    assert ran == ["good", "broken", "missing", "wrong", "good"]
    by_name = {line["check"]: line for line in lines}
    assert [line["check"] for line in lines] == ["good", "broken", "missing", "wrong", "after"]
    assert by_name["good"]["ok"] is True and by_name["good"]["step_seconds"] == 0.1
    assert by_name["broken"] == {"check": "broken", "ok": False, "seconds": by_name["broken"]["seconds"],
                                 "error": "RuntimeError: CUDA error: an illegal memory access"}
    assert by_name["missing"]["skipped"] is True and "ok" not in by_name["missing"]
    assert by_name["wrong"]["ok"] is False and by_name["wrong"]["error"].startswith("CheckFailed: predicted")
    assert by_name["wrong"]["error_pct"] == -50.0  # a wrong result keeps its figures
    assert by_name["after"]["ok"] is True
    assert all(isinstance(line["seconds"], float) for line in lines)


def test_exit_code_says_whether_any_check_failed(gpu_check, tmp_path, capsys):
    out = tmp_path / "lines.jsonl"
    ran: list[str] = []
    checks = _fake_checks(gpu_check, ran)
    assert gpu_check.main(["--device", "cpu", "--json-out", str(out)], checks) == 1
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [line["check"] for line in printed] == ["good", "broken", "missing", "wrong", "after"]
    assert [json.loads(x) for x in out.read_text().splitlines()] == printed
    # --only picks checks by name; a skip is not a failure
    assert gpu_check.main(["--device", "cpu", "--only", "good", "--only", "missing"], checks) == 0
    assert [json.loads(x)["check"] for x in capsys.readouterr().out.splitlines()] == ["good", "missing"]


def test_every_check_has_a_unique_name_and_the_planner_configs_are_covered(gpu_check):
    names = [name for name, _ in gpu_check.all_checks()]
    assert len(names) == len(set(names))
    assert {"cuda", "bf16_autocast", "fp16_grad_scaler", "bitsandbytes_4bit", "lora_demo_llm"} <= set(names)
    assert sum(name.startswith("plan: ") for name in names) == len(gpu_check.PLAN_CONFIGS) >= 3


@pytest.mark.parametrize("name, memory_gib, expected", [
    ("NVIDIA H100 80GB HBM3", 80, "H100"), ("NVIDIA A100-SXM4-80GB", 80, "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", 40, "A100-40GB"), ("NVIDIA L40S", 46, None), ("Tesla T4", 15, "T4"),
])
def test_catalog_gpu_names_the_listed_gpu_or_none(gpu_check, name, memory_gib, expected):
    assert gpu_check.catalog_gpu(name, memory_gib * 2**30) == expected


def test_every_recipe_the_checks_train_is_valid(gpu_check, tmp_path):
    """On the GPU machine a stale key would fail every check at once; here it fails one test."""
    from leantrain.engine.run import as_recipe

    ctx = gpu_check.Context("cuda", tmp_path, steps=5)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in gpu_check.synthetic_chats(4, 0)))
    recipes = [gpu_check.classify_recipe(ctx, "x", {"precision": p}) for p in ("bf16", "fp16")]
    recipes += [gpu_check.bnb_recipe(ctx, str(chats), str(chats)),
                gpu_check.demo_llm_recipe(ctx, str(chats), str(chats), path=tmp_path / "absent.yaml")[0]]
    recipes += [gpu_check.planner_recipe(ctx, *config) for config in gpu_check.PLAN_CONFIGS]
    for recipe in recipes:
        parsed = as_recipe(recipe)
        assert parsed.train.device == "cuda" and parsed.train.max_steps in (3, 5), recipe
        assert parsed.output.tensorboard is False
    assert as_recipe(recipes[2]).cuts.quantized_base.backend == "bitsandbytes"
    if gpu_check.DEMO_LLM.is_file():  # the demo recipe itself, shortened
        demo, note = gpu_check.demo_llm_recipe(ctx, str(chats), str(chats))
        assert note == "examples/demo-llm.yaml", note
        assert demo.train.max_steps == 5 and demo.train.device == "cuda" and demo.data.train == str(chats)
        assert demo.model.name_or_path == "bundled:smollm2" and demo.cuts.lora.enabled
