"""`leantrain ablate` end to end on the tiny BERT: rungs in fresh processes, measured figures
in ablation.json, a report, and time to a target metric."""
from __future__ import annotations

import json

import pytest
import yaml

from leantrain.ablate import AblationSettings, run_ablation
from leantrain.cli import main


@pytest.fixture
def recipe_file(tmp_path, tiny_recipe):
    # The tiny BERT has no weights file: every rung initialises it from its config (seeded).
    recipe = {**tiny_recipe, "cuts": {"lora": {"target_modules": ["query", "value"]}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_ablate_steps_writes_measured_rungs_and_report(recipe_file, tmp_path, capsys):
    out = tmp_path / "ablation"
    code = main(["ablate", str(recipe_file), "--steps", "4", "--cuts", "lora,gradient_checkpointing", "--no-alone",
                 "--price-per-hour", "3.6", "--output", str(out)])
    assert code == 0
    rungs = json.loads((out / "ablation.json").read_text())["rungs"]
    assert [r["cuts"] for r in rungs] == [[], ["lora"], ["lora", "gradient_checkpointing"]]
    for rung in rungs:
        summary = json.loads((out / rung["slug"] / "summary.json").read_text())
        assert rung["status"] == "completed" and rung["steps"] == 4
        assert rung["cost_usd"] == pytest.approx(summary["train_seconds"] * 3.6 / 3600, abs=1e-6)
        assert rung["peak_memory_bytes"] == summary["peak_memory_bytes"] > 0
        assert rung["metric"] == "accuracy" and rung["metric_value"] == summary["eval"]["accuracy"]
        assert sorted(summary["cuts"]) == sorted(rung["cuts"] + ["fast_dropout"])  # on by default: kept in every rung
    base, lora, checkpointed = rungs
    assert lora["trainable_params"] < base["trainable_params"] / 10
    assert lora["peak_memory_bytes"] < base["peak_memory_bytes"]
    assert (checkpointed["memory_breakdown"]["saved_activations"]
            < lora["memory_breakdown"]["saved_activations"])
    assert (out / "report.html").is_file() and "LoRA + checkpointing" in capsys.readouterr().out

    # --resume reuses the finished rungs (no process is started); --only picks rungs.
    (out / "report.html").unlink()
    assert main(["ablate", str(recipe_file), "--steps", "4", "--cuts", "lora,gradient_checkpointing", "--no-alone",
                 "--price-per-hour", "3.6", "--output", str(out), "--resume", "--only", "2,3"]) == 0
    assert capsys.readouterr().out.count("reused the finished run") == 2
    again = json.loads((out / "ablation.json").read_text())["rungs"]
    assert again == rungs[1:] and (out / "report.html").is_file()


def test_ablate_to_metric_stops_each_rung_at_the_target(tiny_recipe, tmp_path):
    # Long enough (2,400 steps) that the stop, sent when an evaluation meets the target,
    # always lands before the run would end by itself.
    recipe = {**tiny_recipe, "cuts": {"lora": {"target_modules": ["query", "value"]}}}
    recipe["train"] = {**recipe["train"], "epochs": 200}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    settings = AblationSettings(recipe=str(recipe_file), output=tmp_path / "to-target", target=("loss", 100.0),
                                cuts=["lora"], price_per_hour=3.6, eval_every=2)
    ablation = run_ablation(settings, echo=lambda *a, **k: None)
    assert ablation["mode"]["target"] == {"metric": "loss", "value": 100.0}
    for rung in ablation["rungs"]:
        # The first evaluation (step 2) meets the target; the rung is stopped well before its 2,400 steps.
        assert rung["status"] == "reached_target", rung
        assert rung["target"]["reached"] and rung["target"]["step"] == 2
        assert rung["steps"] < 1200
        assert not (tmp_path / "to-target" / rung["slug"] / "checkpoints").exists()
        assert rung["target"]["cost_usd"] == pytest.approx(rung["target"]["seconds"] * 3.6 / 3600, abs=1e-6)


def test_ablate_prices_from_the_catalog(recipe_file, tmp_path):
    from leantrain.ablate.runner import resolve_price
    from leantrain.plan.catalog import hourly_price

    price, source = resolve_price(AblationSettings(recipe=str(recipe_file), output=tmp_path, gpu="T4"), 0.1)
    assert price == hourly_price("T4") and price != 0.1 and "T4" in source
    spot, _ = resolve_price(AblationSettings(recipe=str(recipe_file), output=tmp_path, gpu="T4", spot=True), 0.1)
    assert spot == hourly_price("T4", spot=True) < price


def test_ablate_needs_a_goal(recipe_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["ablate", str(recipe_file), "--output", str(tmp_path / "x")])
    assert main(["ablate", str(recipe_file), "--to-metric", "accuracy", "--output", str(tmp_path / "x")]) == 2
    assert "METRIC=VALUE" in capsys.readouterr().err
