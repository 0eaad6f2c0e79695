"""The dashboard in a real headless Chromium: it loads, draws its charts, and shows a value
a run appends to metrics.jsonl without the page being reloaded."""
from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from leantrain.cli import main
from leantrain.dashboard import make_server


def _train_line(step: int, loss: float, seconds: float) -> dict:
    return {"step": step, "epoch": 0, "wall_seconds": seconds, "event": "train", "loss": loss, "lr": 1e-3,
            "total_steps": 100, "train_seconds": seconds, "samples_per_second": 16 * step / seconds,
            "data_wait_fraction": 0.02, "cpu_utilization": 0.9, "peak_rss_bytes": 300_000_000}


def _write_run(run_dir, price: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"hardware:\n  price_per_hour: {price}\nbudget:\n  max_usd: 0.5\n")
    lines = [_train_line(s, 2.0 - s / 50, 3.0 * s) for s in (10, 20, 30)]
    lines.append({"step": 30, "epoch": 0, "wall_seconds": 95.0, "event": "eval", "loss": 1.5, "accuracy": 0.6})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def dashboard(tmp_path):
    _write_run(tmp_path / "runs" / "alpha", price=3.6)
    _write_run(tmp_path / "runs" / "ablation" / "01-baseline", price=1.8)
    server = make_server(tmp_path / "runs", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", tmp_path / "runs"
    finally:
        server.shutdown()
        server.server_close()


def test_api_reports_dollars_from_train_time_and_price(dashboard):
    url, _ = dashboard
    runs = {r["name"]: r for r in json.load(urllib.request.urlopen(url + "api/runs"))["runs"]}
    assert sorted(runs) == ["ablation/01-baseline", "alpha"]
    alpha = runs["alpha"]
    # 90 train seconds at $3.6/h; 30 of 100 steps done, so the projection is 100/30 of it.
    assert alpha["dollars"] == pytest.approx(0.09)
    assert alpha["projected_dollars"] == pytest.approx(0.3)
    assert runs["ablation/01-baseline"]["dollars"] == pytest.approx(0.045)
    assert alpha["status"] == "running" and alpha["budget_usd"] == 0.5


def test_page_draws_charts_and_follows_appended_metrics(dashboard, browser):
    url, runs = dashboard
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector('section.run[data-run="alpha"] canvas')
    card = page.locator('section.run[data-run="alpha"]')
    assert card.locator("canvas").count() == 4
    assert page.locator("section.run").count() == 2
    assert "1.4000" in card.locator('[data-field="loss"]').inner_text()
    points = page.evaluate("window.leantrainDashboard.cards.alpha.charts.loss.data[0].length")

    with (runs / "alpha" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(_train_line(40, 0.4242, 120.0)) + "\n")
    page.wait_for_function(
        "document.querySelector('section.run[data-run=\"alpha\"] [data-field=\"loss\"]').innerText.includes('0.4242')",
        timeout=10_000)
    assert page.evaluate("window.leantrainDashboard.cards.alpha.charts.loss.data[0].length") == points + 1
    assert "$0.12000" in card.locator('[data-field="spent"]').inner_text()
    # Everything came from the local server: no CDN, no other host.
    assert requests and all(r.startswith(url) for r in requests)
    page.close()


def test_dashboard_command_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
