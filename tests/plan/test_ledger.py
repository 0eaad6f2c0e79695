"""The live ledger on a real run, and the plan's step count and JSON for the same recipe."""
from __future__ import annotations

import json

from leantrain.cli import main
from leantrain.engine.run import train
from leantrain.plan.catalog import hourly_price


def test_ledger_bills_the_catalog_price_and_plan_predicts_the_steps(tiny_recipe, tmp_path, capsys):
    tiny_recipe["hardware"] = {"name": "T4"}
    tiny_recipe["train"]["epochs"] = 1
    recipe_file = tmp_path / "r.json"  # JSON is YAML: load_recipe reads it
    recipe_file.write_text(json.dumps(tiny_recipe))
    assert main(["plan", str(recipe_file), "--json", "--gpu", "T4"]) == 0
    planned = json.loads(capsys.readouterr().out)
    for key in ("peak_memory_bytes", "memory_breakdown", "flops_per_step", "tokens_per_step", "recommendation"):
        assert key in planned
    for row in planned["gpus"]:
        assert {"fits", "max_batch_size", "hours", "usd_on_demand", "usd_spot"} <= set(row)

    result = train(tiny_recipe, show_progress=False)
    summary = result.summary
    assert planned["gpus"][0]["steps"] == summary["steps"]
    assert summary["price_per_hour"] == hourly_price("T4")
    expected = summary["price_per_hour"] * summary["train_seconds"] / 3600
    # cost_usd is rounded to 6 decimals: a sub-second run's cost is ~1e-5, so allow the rounding too.
    assert abs(summary["cost_usd"] - expected) <= 0.02 * expected + 5e-7
    assert summary["mfu"] > 0 and summary["projected_cost_usd"] >= summary["cost_usd"] * 0.98
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    costs = [x["cost_usd"] for x in lines if x["event"] == "train"]
    assert len(costs) >= 2 and costs == sorted(costs) and costs[-1] > 0
    assert all("mfu" in x and "data_wait_fraction" in x and "cpu_percent" in x for x in lines if x["event"] == "train")


def test_explicit_price_wins_over_the_catalog(tiny_recipe):
    tiny_recipe["hardware"] = {"name": "T4", "price_per_hour": 7.0}
    tiny_recipe["train"].update(max_steps=2, epochs=1)
    summary = train(tiny_recipe, show_progress=False).summary
    assert summary["price_per_hour"] == 7.0
    assert abs(summary["cost_usd"] - 7.0 * summary["train_seconds"] / 3600) < 1e-5


def test_flops_are_recounted_each_epoch_when_the_work_per_sample_changes(tiny_recipe):
    # With a frozen prefix the first epoch computes it and later epochs read it from the
    # cache: charging every sample at the first step's rate would overstate MFU.
    tiny_recipe["cuts"] = {"lora": {"layers": [1]}, "frozen_prefix": 1}
    tiny_recipe["train"]["epochs"] = 3
    summary = train(tiny_recipe, show_progress=False).summary
    at_first_rate = summary["flops_per_sample"] * summary["samples_seen"]
    assert 0 < summary["flops_counted"] < 0.95 * at_first_rate  # the first step alone would give exactly at_first_rate
    expected_mfu = summary["flops_counted"] / summary["train_seconds"] / summary["peak_flops_per_device"]
    assert abs(summary["mfu"] - expected_mfu) <= 0.02 * expected_mfu + 1e-5
