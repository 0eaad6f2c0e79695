"""`leantrain plan --nproc/--nodes`: per-device memory under DDP and FSDP, communication
volume, and the bill for every device, checked against the real model and a real DDP run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import leantrain
from leantrain.cli import main
from leantrain.errors import UserError
from leantrain.plan.planner import plan
from leantrain.recipe import parse_recipe

HERE = Path(__file__).parent
LORA = {"r": 4, "alpha": 8}


def _recipe(model_dir, cuts: dict, batch: int = 4, **train) -> object:
    return parse_recipe({"model": {"name_or_path": str(model_dir), "task": "causal-lm"}, "data": {"max_length": 32},
                         "cuts": cuts, "train": {"batch_size": batch, **train}})


def _plan(recipe, nproc: int = 1, nodes: int = 1, **kwargs) -> dict:
    return plan(recipe, gpus=["A10G"], rows=400, recommend=False, nproc=nproc, nodes=nodes, **kwargs)


def _state(p: dict) -> int:
    m = p["memory_breakdown"]
    return m["weights"] + m["gradients"] + m["optimizer_states"]


def _real_model(model_dir, cuts: dict) -> torch.nn.Module:
    """The model a run trains (real tensors, LoRA through the run's own cut)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from leantrain.cuts.lora import Lora, LoraSettings
    from leantrain.engine.context import RunContext

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))  # the fixture has no weights
    if "lora" in cuts:
        model = Lora(LoraSettings(**cuts["lora"])).prepare_model(model, RunContext(device=torch.device("cpu"), train=None))
    return model


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def test_fsdp_divides_model_state_by_the_world_size(tiny_llama_dir):
    model = _real_model(tiny_llama_dir, {})
    params = list({id(p): p for p in model.parameters()}.values())
    whole_state = 4 * _bytes(params)               # fp32 weights, gradients, two AdamW states
    row_bytes = sum(p.numel() // p.shape[0] * p.element_size() for p in params)  # padding < one row per tensor
    buffers = _bytes(model.buffers())
    assert _state(_plan(_recipe(tiny_llama_dir, {"fsdp": True}))) == whole_state + buffers  # one device: nothing sharded
    previous = None
    for world in (2, 4, 8):
        p = _plan(_recipe(tiny_llama_dir, {"fsdp": True}), nproc=world)
        per_rank = _state(p) - buffers                # buffers are not sharded
        assert whole_state / world <= per_rank <= whole_state / world + 4 * row_bytes
        assert previous is None or per_rank < previous
        previous = per_rank
        m = p["memory_breakdown"]
        assert m["optimizer_states"] == 2 * m["gradients"]
        assert m["gathered_weights"] > 0 and m["total"] == sum(v for k, v in m.items() if k != "total")


def test_ddp_keeps_the_whole_model_state_on_every_device(tiny_llama_dir):
    recipe = _recipe(tiny_llama_dir, {"lora": LORA})
    one = _plan(recipe)
    for world, nodes in ((2, 1), (8, 1), (4, 2)):
        p = _plan(recipe, nproc=world, nodes=nodes)
        assert p["distribution"]["strategy"] == "ddp" and p["distribution"]["world_size"] == world * nodes
        assert p["memory_breakdown"] == one["memory_breakdown"]  # buckets are the gradients themselves


@pytest.mark.parametrize("cuts", [{}, {"lora": LORA}])
def test_communication_volume_matches_the_real_models_bytes(tiny_llama_dir, cuts):
    model = _real_model(tiny_llama_dir, cuts)
    grads = _bytes(p for p in model.parameters() if p.requires_grad)
    params = _bytes(model.parameters())
    world, accumulation = 4, 3
    ddp = _plan(_recipe(tiny_llama_dir, {**cuts, "grad_accumulation": accumulation}), nproc=world)
    comm = ddp["distribution"]["communication"]
    assert comm["gradient_bytes"] == grads
    # Ring all-reduce, once per optimizer step however many micro-batches it has.
    assert comm["breakdown"]["all_reduce_gradients"] == round(2 * (world - 1) / world * grads)
    fsdp = _plan(_recipe(tiny_llama_dir, {**cuts, "grad_accumulation": accumulation, "fsdp": True}), nproc=world)
    comm = fsdp["distribution"]["communication"]["breakdown"]
    assert comm["all_gather_forward"] == comm["all_gather_backward"] == accumulation * round(3 / 4 * params)
    assert comm["reduce_scatter_gradients"] == round(3 / 4 * grads)
    kept = _plan(_recipe(tiny_llama_dir, {**cuts, "fsdp": {"reshard_after_forward": False}}), nproc=world)
    assert kept["distribution"]["communication"]["breakdown"]["all_gather_backward"] == 0


def test_every_device_of_every_node_is_billed(tiny_llama_dir):
    recipe = _recipe(tiny_llama_dir, {"lora": LORA}, epochs=2)
    rows = {nodes: _plan(recipe, nproc=2, nodes=nodes, price_per_hour=1.0)["gpus"][0] for nodes in (1, 2)}
    for nodes, row in rows.items():
        assert row["devices"] == 2 * nodes
        assert row["usd_on_demand"] == pytest.approx(row["hours"] * row["devices"], rel=1e-3)
        assert row["steps"] == 2 * math.ceil(math.ceil(400 / 4) / (2 * nodes))  # a step spans every rank
    slow_link = rows[2]
    assert slow_link["link"] == "inter-node network" and rows[1]["link"] == "intra-node"
    assert rows[2]["usd_on_demand"] >= rows[1]["usd_on_demand"] * 0.99  # the same work, no cheaper on more devices


def test_slow_network_exposes_communication_time(tiny_llama_dir, tmp_path):
    catalog = tmp_path / "links.yaml"
    catalog.write_text("accelerators:\n  A10G: {memory_gb: 24, peak_tflops: {fp32: 31.2, bf16: 70}, bandwidth_gbps: 600, "
                       "intra_node_gbps: 32, inter_node_gbps: 0.00001}\n", encoding="utf-8")
    recipe = _recipe(tiny_llama_dir, {})
    row = _plan(recipe, nproc=2, nodes=2, catalog_file=str(catalog))["gpus"][0]
    assert row["comm_seconds_per_step"] > row["compute_seconds_per_step"] > 0
    assert row["exposed_comm_seconds_per_step"] > 0 and row["hours_no_overlap"] >= row["hours"]
    # Seconds = bytes per step / the node's network.
    comm = _plan(recipe, nproc=2, nodes=2, catalog_file=str(catalog))["distribution"]["communication"]
    assert row["comm_seconds_per_step"] == pytest.approx(comm["bytes_per_step"] / 0.00001e9, rel=1e-3)


def test_json_has_the_distribution_fields(tiny_llama_dir, tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"model": {"name_or_path": str(tiny_llama_dir), "task": "causal-lm"},
                                "data": {"max_length": 32}, "cuts": {"fsdp": True}}), encoding="utf-8")
    assert main(["plan", str(path), "--gpu", "A10G", "--rows", "100", "--nproc", "4", "--nodes", "2", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["distribution"]["strategy"] == "fsdp" and p["distribution"]["world_size"] == 8
    assert set(p["distribution"]["communication"]["breakdown"]) == {"all_gather_forward", "all_gather_backward",
                                                                   "reduce_scatter_gradients"}
    row = p["gpus"][0]
    assert {"devices", "comm_seconds_per_step", "exposed_comm_seconds_per_step", "compute_seconds_per_step",
            "hours_no_overlap", "link", "link_gbps"} <= set(row) and row["devices"] == 8
    assert "fsdp" not in " ".join(p["notes"])  # modeled, not listed as ignored
    assert main(["plan", str(path), "--gpu", "A10G", "--rows", "100", "--nproc", "0"]) == 2
    assert "--nproc: must be at least 1" in capsys.readouterr().err


def test_fsdp_cut_refuses_an_adapter_on_a_from_scratch_model():
    from types import SimpleNamespace

    from leantrain.cuts.fsdp import Fsdp, FsdpSettings
    from leantrain.engine.context import RunContext
    from leantrain.engine.distributed import Parallel

    adapter_model = SimpleNamespace(peft_config={})
    run = RunContext(device=torch.device("cpu"), train=None, parallel=Parallel(world_size=2),
                     model_section=SimpleNamespace(from_scratch=True))
    with pytest.raises(UserError, match="cannot be saved from shards"):
        Fsdp(FsdpSettings()).prepare_model(adapter_model, run)
    run.model_section = SimpleNamespace(from_scratch=False)
    assert Fsdp(FsdpSettings()).prepare_model(adapter_model, run) is adapter_model
    run.model_section, run.parallel = SimpleNamespace(from_scratch=True), Parallel()  # one process: nothing sharded
    assert Fsdp(FsdpSettings()).prepare_model(adapter_model, run) is adapter_model


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_planned_all_reduce_payload_is_what_ddp_sends(tiny_recipe, tmp_path):
    """Two gloo ranks train with accumulation 2; a DDP comm hook counts the bucket bytes
    each rank hands to its all-reduce: per optimizer step they are the planner's figure."""
    recipe = {**tiny_recipe, "cuts": {"lora": LORA, "grad_accumulation": 2},
              "train": {**tiny_recipe["train"], "max_steps": 2, "checkpoint_every": 1000},
              "output": {"dir": str(tmp_path / "run"), "save_model": False, "tensorboard": False}}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(leantrain.__file__).parents[1]), str(HERE / ".."),
                                           os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "ddp_comm_worker.py"), str(path), str(tmp_path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    planned = plan(parse_recipe(recipe), gpus=["A10G"], recommend=False, nproc=2)["distribution"]["communication"]
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-3000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text(encoding="utf-8"))
        assert record["status"] == "completed" and record["steps"] == 2
        assert sum(record["bucket_bytes"]) == record["steps"] * planned["gradient_bytes"]
    # On two ranks a ring all-reduce sends 2 x (2-1)/2 = 1 x the payload.
    assert planned["breakdown"]["all_reduce_gradients"] == planned["gradient_bytes"]
