"""Preemption-safe checkpoints: atomic, verified, and never unpickled.

A checkpoint is a folder ``checkpoints/step-000123/`` holding tensors in safetensors
files and everything else in JSON, plus ``manifest.json`` with the sha256 of every file.
Writing goes: temporary folder on the same filesystem -> fsync each file -> manifest ->
rename into place -> fsync the parent -> move the ``latest`` pointer -> prune old ones.
A kill at any moment therefore leaves the previous complete checkpoint untouched, and a
damaged one is detected by its manifest and skipped, never silently replaced by step 0.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import torch

from leantrain.errors import UserError

MANIFEST = "manifest.json"
LATEST = "latest"
PREFIX = "step-"
# Only these file kinds may appear in a checkpoint: a pickle where a tensor file should
# be is refused before anything in it is read.
ALLOWED_SUFFIXES = {".safetensors", ".json"}


class CheckpointError(UserError):
    """A checkpoint is missing, damaged or unsafe."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0]})") from None


def write_checkpoint(root: Path, step: int, write_contents: Callable[[Path], None], keep: int = 2) -> Path:
    """Write a checkpoint for ``step`` under ``root`` atomically; returns its folder.

    ``write_contents(folder)`` writes the files; this function makes them durable.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:09d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_contents(tmp)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        for path in files:
            _fsync_file(path)
        write_json(tmp / MANIFEST, {"step": step, "files": {p.name: sha256(p) for p in files}})
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        # A full disk or a vanished mount: the previous checkpoint is untouched; say so.
        shutil.rmtree(tmp, ignore_errors=True)
        kept = next(iter(_step_dirs(root)), None)
        raise CheckpointError(f"cannot write checkpoint {final.name} in {root}: {exc.strerror or exc}; "
                              f"the previous checkpoint ({kept.name if kept else 'none'}) is intact") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(root, final.name)
    prune(root, keep)
    return final


def _point_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name + "\n", encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def _step_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, and stale temporary folders."""
    for old in _step_dirs(root)[max(keep, 1):]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def validate(folder: Path) -> None:
    """Raise CheckpointError unless every file the manifest lists is intact."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (incomplete write?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, UnicodeDecodeError):
        raise CheckpointError(f"{folder}: {MANIFEST} is damaged") from None
    for path in folder.iterdir():
        if path.name != MANIFEST and path.suffix not in ALLOWED_SUFFIXES:
            raise CheckpointError(f"{path}: unexpected file type {path.suffix or '(none)'} in a checkpoint; refusing to load it")
    for name, digest in files.items():
        path = folder / name
        if Path(name).suffix not in ALLOWED_SUFFIXES:
            raise CheckpointError(f"{path}: unexpected file type in a checkpoint; refusing to load it")
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        if sha256(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (file damaged)")


def candidates(root: Path) -> Iterator[Path]:
    """Checkpoints to try, best first: the one ``latest`` names, then newest to oldest."""
    seen = set()
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if named.is_dir():
            seen.add(named)
            yield named
    for folder in _step_dirs(root):
        if folder not in seen:
            yield folder


def find_valid(root: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that validates; each damaged one is reported via ``warn``."""
    for folder in candidates(root):
        try:
            validate(folder)
            return folder
        except CheckpointError as exc:
            warn(f"skipping damaged checkpoint: {exc}")
    return None
