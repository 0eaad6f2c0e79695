import json

from leantrain import train


def test_tiny_recipe_trains_and_writes_run_dir(tiny_recipe):
    result = train(tiny_recipe, show_progress=False)
    run_dir = result.run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in ("eval", "steps", "epochs", "train_seconds", "samples_per_second", "trainable_params",
                "total_params", "peak_memory_bytes", "peak_memory_method", "saved"):
        assert key in summary, key
    assert {"accuracy", "majority_class_accuracy", "loss"} <= set(summary["eval"])
    assert (run_dir / "config.yaml").is_file()
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "train" for e in events) and any(e["event"] == "eval" for e in events)
