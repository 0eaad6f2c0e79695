"""Tokenize once: tokenized examples cached on disk, keyed by everything that shapes them.

Tokenizing (and curating) the same data again for every run of a sweep is pure waste, so
``load_text_data`` stores its result under a *fingerprint*: the sha256 of the source
bytes, the tokenizer (its full serialized definition, class and special tokens) and every
preprocessing setting. Equal fingerprint means equal result, so a hit is safe to reuse and
any change (one byte of data, ``max_length``, the seed of the split...) is a miss.

An entry is a folder of Arrow IPC shards (read memory-mapped), a JSON metadata file and a
manifest holding each file's size and sha256. Entries are written to a temporary folder
and renamed into place, so a reader never sees a half-written entry; an entry that fails
its checksums anyway (disk error, manual edits, a truncated copy) is reported with a
:class:`CacheWarning`, deleted and rebuilt, never used. Nothing is pickled: Arrow and JSON
only, so a cache folder shared between users cannot run code.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Imported with the module, not on first read: a run's `prepare_seconds` then measures
# reading, curating and tokenizing, not the ~20 ms import that a cache hit and a miss
# pay alike.
import pyarrow as pa

from leantrain.data.shards import MappedExamples, column_type
from leantrain.caches import cache_home
from leantrain.data.sources import file_sha256

# Bump when the tokenized layout or the preprocessing code changes what an entry holds.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
META = "meta.json"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 24 * 3600
SHARD_ROWS = 50_000  # rows per Arrow shard: bounded files, cheap partial re-verification


class CacheWarning(UserWarning):
    """A cache entry was unusable (corrupt, partial) and is being rebuilt."""


def cache_root(cache_dir: str | None = None) -> Path:
    """The recipe's ``data.cache_dir``, else ``$LEANTRAIN_CACHE_DIR/tokenized``, else
    ~/.cache/leantrain/tokenized. ``$LEANTRAIN_CACHE_DIR`` is the root of every leantrain
    cache (the planner's calibration lives beside the tokenized data)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return cache_home("tokenized")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's output: its definition, class and special tokens.

    For fast tokenizers the full ``tokenizers`` JSON (vocab, merges, normalizer, pre- and
    post-processor) is hashed, minus the truncation/padding state, which the tokenizer's
    own calls change and which ``max_length`` (part of the fingerprint) decides anyway.
    """
    digest = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}\0".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        digest.update(_backend_digest(backend).encode())
    else:  # slow tokenizer: its vocabulary, plus the files it was loaded from
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        folder = Path(str(getattr(tokenizer, "name_or_path", "")))
        if folder.is_dir():
            for f in sorted(p for p in folder.iterdir() if p.is_file() and ("token" in p.name or p.suffix in (".model", ".txt"))):
                digest.update(f"{f.name}\0{file_sha256(f)}".encode())
    simple = (str, int, float, bool, type(None))
    details = {
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "added": {str(k): str(v) for k, v in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items())},
        "sides": [getattr(tokenizer, "truncation_side", None), getattr(tokenizer, "padding_side", None)],
        "model_max_length": getattr(tokenizer, "model_max_length", None),
        "init": {
            k: v for k, v in sorted(getattr(tokenizer, "init_kwargs", {}).items())
            if isinstance(v, simple) and not (k.endswith("_file") or k == "name_or_path")
        },
    }
    digest.update(json.dumps(details, sort_keys=True, default=str).encode())
    return digest.hexdigest()


_BACKEND_DIGESTS: dict[int, tuple[object, int, str]] = {}


def _backend_digest(backend) -> str:
    """sha256 of :func:`_backend_definition`, once per tokenizer object and vocabulary size.

    Serialising a 30k vocabulary costs ~4 ms, which was 40% of a warm cache hit on the demo;
    a tokenizer that gains tokens (the usual in-place change) gets a new size and is hashed
    again. The object is kept with its digest so its id cannot be reused by another.
    """
    size = backend.get_vocab_size(with_added_tokens=True)
    known = _BACKEND_DIGESTS.get(id(backend))
    if known is not None and known[0] is backend and known[1] == size:
        return known[2]
    digest = hashlib.sha256(_backend_definition(backend).encode()).hexdigest()
    _BACKEND_DIGESTS[id(backend)] = (backend, size, digest)
    return digest


def _backend_definition(backend) -> str:
    """``backend.to_str()`` without the truncation/padding state, which is restored after.

    Clearing the state beats re-serialising the parsed JSON (tens of ms for a 30k vocab,
    paid on every cache hit); the tokenizer's next call sets the state it needs anyway.
    """
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        return backend.to_str()
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)


def fingerprint(parts: dict) -> str:
    """sha256 of a JSON-able description of every input (canonical: sorted keys)."""
    payload = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Entry:
    train: list[dict]
    eval: list[dict]
    meta: dict


class TokenCache:
    """Entries live in ``root/<fingerprint>/``; ``load`` verifies, ``store`` writes atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Entry | None:
        """The entry for ``key``, or None on a miss. A damaged entry warns, is deleted, misses."""
        folder = self.path(key)
        if not folder.exists():
            return None
        try:
            return self._read(folder, key)
        except _Corrupt as exc:
            return self._discard(folder, exc)

    def _read(self, folder: Path, key: str) -> Entry:
        manifest, meta, columns, constant = self._verified(folder, key)
        with _gc_paused():
            train, evaluation = (self._read_split(folder, manifest, split, columns, constant) for split in ("train", "eval"))
        if [len(train), len(evaluation)] != manifest.get("rows"):
            raise _Corrupt("row counts differ from the manifest")
        return Entry(train, evaluation, meta)

    def open_mapped(self, key: str, checksums: bool = True) -> Entry | None:
        """Like :meth:`load`, but the splits stay on disk: rows are built on access from the
        memory-mapped shards (for data larger than memory). ``checksums=False`` skips
        re-hashing an entry this process has just committed (sizes are still checked)."""
        folder = self.path(key)
        if not folder.exists():
            return None
        try:
            manifest, meta, columns, constant = self._verified(folder, key, checksums)
            splits = []
            for split in ("train", "eval"):
                names = manifest.get("splits", {}).get(split, [])
                if any(name not in manifest["files"] for name in names):
                    raise _Corrupt(f"a {split} shard is not in the manifest")
                splits.append(MappedExamples([folder / n for n in names], columns, constant, meta.get("label_names")))
        except _Corrupt as exc:
            return self._discard(folder, exc)
        except OSError as exc:  # pyarrow raises its ArrowException subclasses of OSError here too
            return self._discard(folder, _Corrupt(f"a shard is not readable: {exc}"))
        if [len(s) for s in splits] != manifest.get("rows"):
            return self._discard(folder, _Corrupt("row counts differ from the manifest"))
        return Entry(splits[0], splits[1], meta)

    def _discard(self, folder: Path, exc: Exception) -> None:
        warnings.warn(
            f"leantrain: tokenized cache entry {folder} is unusable ({exc}); deleted, tokenizing again",
            CacheWarning, stacklevel=4,
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None

    @staticmethod
    def _verified(folder: Path, key: str, checksums: bool = True) -> tuple[dict, dict, list, dict]:
        """Manifest, metadata and column layout of an entry whose every file checks out."""
        manifest = _read_json(folder / MANIFEST, "manifest")
        files = manifest.get("files")
        if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key or not isinstance(files, dict):
            raise _Corrupt("manifest does not describe this entry")
        for name, info in files.items():
            f = folder / name
            if not f.is_file():
                raise _Corrupt(f"missing file {name}")
            if f.stat().st_size != info.get("bytes"):
                raise _Corrupt(f"{name} has {f.stat().st_size} bytes, the manifest says {info.get('bytes')}")
            if checksums and file_sha256(f) != info.get("sha256"):
                raise _Corrupt(f"checksum mismatch in {name}")
        meta = _read_json(folder / META, "metadata")
        columns, constant = manifest.get("columns"), manifest.get("constant", {})
        if not isinstance(columns, list) or not isinstance(constant, dict):
            raise _Corrupt("manifest lacks the column layout")
        return manifest, meta, columns, constant

    @staticmethod
    def _read_split(folder: Path, manifest: dict, split: str, columns: list[str], constant: dict) -> list[dict]:
        """The examples of one split, shard by shard, each shard memory-mapped."""

        rows: list[dict] = []
        for name in manifest.get("splits", {}).get(split, []):
            if name not in manifest["files"]:
                raise _Corrupt(f"shard {name} is not in the manifest")
            try:
                with pa.memory_map(str(folder / name), "r") as source:
                    rows += _rows(pa.ipc.open_file(source).read_all(), columns, constant)
            except (pa.ArrowException, OSError, KeyError) as exc:
                raise _Corrupt(f"{name} is not a readable shard: {exc}") from None
        return rows

    def store(self, key: str, train: list[dict], evaluation: list[dict], meta: dict) -> Path | None:
        """Write an entry atomically; returns its folder (None if it could not be written).

        A cache is an optimisation: a full disk or read-only folder costs a warning, not the run.
        """
        tmp = None
        try:
            tmp = self.new_entry(key)
            splits = {}
            columns = list((train or evaluation or [{}])[0])
            constant = _constant_columns(train + evaluation, columns)
            schema = _schema(train or evaluation, [c for c in columns if c not in constant])
            for split, rows in (("train", train), ("eval", evaluation)):
                splits[split] = []
                for n, start in enumerate(range(0, max(len(rows), 1), SHARD_ROWS)):
                    name = f"{split}-{n:05d}.arrow"
                    _write_shard(tmp / name, rows[start : start + SHARD_ROWS], schema)
                    splits[split].append(name)
            return self.commit(tmp, key, splits, [len(train), len(evaluation)], columns, constant, meta)
        except OSError as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            warnings.warn(f"leantrain: cannot write the tokenized cache in {self.root}: {exc}", CacheWarning, stacklevel=3)
            return None

    def new_entry(self, key: str) -> Path:
        """A fresh temporary folder to fill with an entry's shards, then :meth:`commit`."""
        tmp = self.root / f"{TMP_PREFIX}{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        self._remove_stale_temporaries()
        return tmp

    def commit(self, tmp: Path, key: str, splits: dict, rows: list[int], columns: list[str], constant: dict, meta: dict) -> Path:
        """Checksum the shards in ``tmp``, write metadata and manifest, rename into place."""
        (tmp / META).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        files = {f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in sorted(tmp.iterdir())}
        manifest = {
            "format": CACHE_FORMAT, "key": key, "files": files, "splits": splits,
            "rows": rows, "columns": columns, "constant": constant,
        }
        # The manifest comes last: a folder without one was never finished.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        final = self.path(key)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a concurrent writer's finished entry
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same entry first
        return final

    def _remove_stale_temporaries(self) -> None:
        """Temporary folders of writers that died (killed, power cut) are never read; after
        a day, when no live writer can still be filling them, they are removed."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for path in self.root.glob(f"{TMP_PREFIX}*"):
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


class _Corrupt(Exception):
    pass


@contextmanager
def _gc_paused():
    """Building millions of small lists and dicts triggers the cyclic garbage collector
    over and over (each pass scanning every object of the process, torch's included),
    although none of them can form a cycle: pause it while they are built."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _Corrupt(f"no {what} file") from None
    except (OSError, ValueError) as exc:
        raise _Corrupt(f"unreadable {what}: {exc}") from None
    if not isinstance(value, dict):
        raise _Corrupt(f"{what} is not a JSON object")
    return value


def _constant_columns(rows: list[dict], columns: list[str]) -> dict[str, int]:
    """Per-token columns holding one value everywhere (the attention mask of unpadded rows,
    the segment ids of single texts): stored as that value, rebuilt as ``[v] * length``.
    That halves the shards and, more to the point, what a cache hit has to convert."""
    constant = {}
    for name in columns:
        if name == "input_ids" or not rows or not isinstance(rows[0][name], list):
            continue
        values = {v for r in rows for v in r[name]}
        if len(values) == 1 and all(len(r[name]) == len(r["input_ids"]) for r in rows):
            constant[name] = values.pop()
    return constant


def _rows(table, columns: list[str], constant: dict[str, int]) -> list[dict]:
    """Shard table -> example dicts, column by column (faster than ``Table.to_pylist``)."""
    stored = {name: table.column(name).to_pylist() for name in columns if name not in constant}
    if constant:
        lengths = [len(ids) for ids in stored["input_ids"]]
        for name, value in constant.items():
            stored[name] = [[value] * n for n in lengths]
    ordered = [stored[name] for name in columns]
    return [dict(zip(columns, values)) for values in zip(*ordered)]


def _schema(rows: list[dict], names: list[str]):

    return pa.schema([pa.field(name, column_type(name, rows[0][name])) for name in names])


def _write_shard(path: Path, rows: list[dict], schema) -> None:

    columns = [pa.array([r[f.name] for r in rows], f.type) for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)
