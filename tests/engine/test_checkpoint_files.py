"""Checkpoint folders: atomic writes, manifests, damage detection, pruning, no pickles."""
from __future__ import annotations

import json

import pytest
import torch

from leantrain.engine import checkpoint as ckpt
from leantrain.engine.snapshot import join_tensors, split_tensors


def _writer(value: float):
    def write(folder):
        ckpt.save_tensors(folder / "tensors.safetensors", {"w": torch.full((4,), value)})
        ckpt.write_json(folder / "state.json", {"value": value})
    return write


def test_write_is_atomic_validated_and_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.write_checkpoint(tmp_path, step, _writer(float(step)), keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest", "step-000000003", "step-000000004"]  # no temp folders left
    assert (tmp_path / "latest").read_text().strip() == "step-000000004"
    manifest = json.loads((tmp_path / "step-000000004" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"tensors.safetensors", "state.json"}
    assert ckpt.find_valid(tmp_path, warn=pytest.fail) == tmp_path / "step-000000004"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest", "delete_file"])
def test_damaged_latest_falls_back_to_previous_and_says_so(tmp_path, damage):
    for step in (1, 2):
        ckpt.write_checkpoint(tmp_path, step, _writer(float(step)), keep=2)
    newest = tmp_path / "step-000000002"
    tensors = newest / "tensors.safetensors"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:20])
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (newest / "manifest.json").unlink()
    else:
        tensors.unlink()
    warnings = []
    assert ckpt.find_valid(tmp_path, warnings.append) == tmp_path / "step-000000001"
    assert len(warnings) == 1 and "step-000000002" in warnings[0]


def test_pickle_in_a_checkpoint_is_refused_unread(tmp_path):
    folder = ckpt.write_checkpoint(tmp_path, 1, _writer(1.0))
    # A pickle that would create a file if it were ever unpickled.
    marker = tmp_path / "pwned"
    payload = (b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    (folder / "optimizer.pt").write_bytes(payload)
    with pytest.raises(ckpt.CheckpointError, match="refusing"):
        ckpt.validate(folder)
    assert not marker.exists()


def test_truncated_tensor_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    ckpt.save_tensors(path, {"w": torch.ones(10)})
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors"):
        ckpt.load_tensors(path)


def test_state_with_tensors_round_trips_through_json_and_safetensors():
    state = {"a": torch.arange(3), "nested": [{"b": torch.ones(2, 2)}, 5, "x"], "none": None}
    tensors: dict = {}
    plain = split_tensors(state, "root", tensors)
    json.dumps(plain)  # everything else is JSON
    back = join_tensors(json.loads(json.dumps(plain)), tensors)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["nested"][0]["b"], state["nested"][0]["b"])
    assert back["nested"][1:] == [5, "x"] and back["none"] is None


def test_full_disk_during_a_write_keeps_the_previous_checkpoint(tmp_path):
    import errno

    ckpt.write_checkpoint(tmp_path, 1, _writer(1.0))

    def full_disk(folder):
        (folder / "state.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ckpt.CheckpointError, match="No space left on device.*step-000000001.*intact"):
        ckpt.write_checkpoint(tmp_path, 2, full_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000001"]
    assert ckpt.find_valid(tmp_path, warn=pytest.fail) == tmp_path / "step-000000001"
