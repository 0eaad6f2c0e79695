"""The catalog: prices come from the data file, user files override it, bad names fail clearly."""
from __future__ import annotations

import json

import pytest
import yaml

from leantrain.cli import main
from leantrain.errors import UserError
from leantrain.plan import calibrate, catalog


def _rows(name: str) -> list[dict]:
    data = yaml.safe_load(catalog.BUILTIN.read_text())
    return [r for r in data["prices"] if r["accelerator"] == name]


def test_hourly_price_is_the_cheapest_listed_provider():
    for name in ("T4", "A100-80GB", "H100"):
        assert catalog.hourly_price(name) == min(r["on_demand"] for r in _rows(name))
        assert catalog.hourly_price(name, spot=True) == min(r["spot"] for r in _rows(name))
        assert catalog.hourly_price(name, spot=True) < catalog.hourly_price(name)


def test_every_price_row_is_dated_and_sourced():
    for row in yaml.safe_load(catalog.BUILTIN.read_text())["prices"]:
        assert row["as_of"] and row["source"].startswith("https://"), row
    required = {"T4", "L4", "A10G", "V100", "A100-40GB", "A100-80GB", "H100", "H200"}
    providers = {r["provider"] for r in yaml.safe_load(catalog.BUILTIN.read_text())["prices"]}
    assert required <= set(catalog.load_catalog().names()) and {"aws", "gcp", "azure"} <= providers


def test_unknown_gpu_names_the_allowed_ones():
    with pytest.raises(UserError, match="unknown GPU 'B300'.*A100-80GB"):
        catalog.hourly_price("B300")


def test_user_file_overrides_a_price_and_adds_an_accelerator(tmp_path, monkeypatch):
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({
        "accelerators": {"MI300X": {"memory_gb": 192, "peak_tflops": {"bf16": 1307}}},
        "prices": [{"accelerator": "T4", "provider": "mine", "on_demand": 0.2},
                   {"accelerator": "MI300X", "provider": "mine", "on_demand": 3.0, "spot": 1.5}],
    }))
    monkeypatch.setenv("LEANTRAIN_CATALOG", str(own))
    assert catalog.hourly_price("T4") == 0.2
    assert catalog.hourly_price("mi300x", spot=True) == 1.5


def test_cpu_calibration_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(tmp_path))
    first = calibrate.cpu_peak_tflops(size=64, seconds=0.01)
    assert set(first) == {"fp32", "bf16"} and all(v > 0 for v in first.values())

    def must_not_run(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(calibrate, "measure_matmul_tflops", must_not_run)
    assert calibrate.cpu_peak_tflops(size=64) == first
    assert json.loads((tmp_path / "calibration" / "cpu_peak.json").read_text())[calibrate.machine_key()] == first


def test_hardware_command_lists_the_catalog(capsys):
    assert main(["hardware", "--json"]) == 0
    listed = {a["name"]: a for a in json.loads(capsys.readouterr().out)["accelerators"]}
    assert set(catalog.load_catalog().names()) == set(listed)
    assert listed["cpu"]["peak_tflops"]["fp32"] > 0 and listed["cpu"]["memory_bytes"] > 0


def test_plan_rejects_an_unknown_gpu(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name_or_path: bundled:minilm}\n")
    assert main(["plan", str(recipe), "--gpu", "Z80"]) == 2
    assert "unknown GPU 'Z80'" in capsys.readouterr().err


def test_calibration_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    # A run calibrates inside its seeded setup: drawing from the global RNG there would
    # change its dropout masks, and a resumed run (cache warm) would diverge from it.
    import torch

    monkeypatch.setenv("LEANTRAIN_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    calibrate.cpu_peak_tflops(refresh=True, size=32, seconds=0.001)
    assert torch.equal(torch.rand(3), expected)
