"""Reports: a run's and an ablation's, self-contained HTML that renders offline in headless
Chromium, plus Markdown next to its PNG plots."""
from __future__ import annotations

import copy
import json
import re

import pytest

from leantrain import train
from leantrain.cli import main
from leantrain.report import write_report


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory):
    """An ablation.json as `leantrain ablate` writes it (three finished rungs, one failed)."""
    path = tmp_path_factory.mktemp("ablation")
    rungs = []
    for i, (name, memory, sps, seconds, accuracy) in enumerate(
            [("baseline (full fine-tune, fp32, no cuts)", 939e6, 38.1, 16.8, 0.65), ("LoRA", 593e6, 64.5, 9.9, 0.63),
             ("LoRA + bf16 + checkpointing", 118e6, 50.8, 12.6, 0.63)], 1):
        rungs.append({"name": name, "slug": f"{i:02d}", "kind": "cumulative", "cuts": [], "overrides": [],
                      "status": "completed", "steps": 40, "peak_memory_bytes": int(memory),
                      "peak_memory_method": "tensor accounting", "samples_per_second": sps, "train_seconds": seconds,
                      "seconds_per_step": seconds / 40, "cost_usd": seconds * 0.09 / 3600, "trainable_params": 1000 * i,
                      "eval": {"accuracy": accuracy}, "metric": "accuracy", "metric_value": accuracy})
    rungs.append({"name": "bf16 only", "slug": "04", "status": "failed", "error": "leantrain: error: boom"})
    ablation = {"recipe": "demo.yaml", "mode": {"steps": 40}, "price_per_hour": 0.09, "price_source": "test", "rungs": rungs}
    (path / "ablation.json").write_text(json.dumps(ablation))
    return path


def test_ablation_report_renders_offline_in_chromium(ablation_dir, browser):
    written = write_report(ablation_dir)
    page_html = written["html"].read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page_html), "the report must not load anything"
    context = browser.new_context(offline=True)
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(written["html"].as_uri())
    rendered = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 100).length")
    assert rendered >= 4
    text = page.inner_text("body")
    assert "LoRA + bf16 + checkpointing" in text and "failed: leantrain: error: boom" in text
    assert "0.13x" in text  # 118 MB against the baseline's 939 MB
    assert all(r.startswith(("file:", "data:")) for r in requests)
    context.close()


def test_ablation_markdown_links_existing_plots(ablation_dir):
    written = write_report(ablation_dir)
    markdown = written["markdown"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) >= 5  # memory, time, dollars, throughput, quality vs cost
    for link in links:
        assert (ablation_dir / link).read_bytes().startswith(b"\x89PNG")


def test_run_report_from_a_real_run(tiny_recipe, tmp_path, capsys):
    recipe = copy.deepcopy(tiny_recipe)
    recipe["budget"] = {"max_usd": 1.0}
    recipe["output"] = {**recipe["output"], "tensorboard": False}
    result = train(recipe, show_progress=False)
    assert not (result.run_dir / "tensorboard").exists()  # the sink is off: no event files
    assert main(["report", str(result.run_dir), "--output", str(tmp_path / "report")]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (tmp_path / "report" / "report.html").read_text()
    names = re.findall(r'<img class="plot" alt="([^"]+)"', page)
    assert names == ["loss", "metrics", "throughput", "memory", "spend"]
    assert f"{result.summary['trainable_params']:,}" in page


def test_report_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
