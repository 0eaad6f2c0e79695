"""Read examples from wherever users keep them, behind one interface: ``read_rows``.

Supported sources:

* a CSV, JSONL or Parquet file (pyarrow parses all three: fast, typed, one dependency);
* a folder of text files, one example per file. If the folder has subfolders, each
  subfolder is a class and its name is the label (the classic "one folder per class"
  layout); files lying directly in such a folder (READMEs, index files) are ignored;
* a Hugging Face ``datasets`` dataset saved with ``save_to_disk``. A DatasetDict gives
  its "train" split unless ``path::split`` names another. ClassLabel columns come out as
  their label *names*, so a trained model's label map says "pos", not "1";
* a Hugging Face hub dataset name, but only if ``datasets`` can load it offline (it is in
  the local cache): leantrain never downloads data.

Every source becomes a ``pyarrow.Table`` first, so column checks, limits, writing and
fingerprinting (for the tokenized cache) are written once. Every failure is a one-line
:class:`DataError` naming the path.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from leantrain.errors import DataError, MissingDataError

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet"}
SPLIT_SEP = "::"
# Files that mark a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TEXT_COLUMN, LABEL_COLUMN = "text", "label"


def split_spec(spec: str | Path) -> tuple[str, str | None]:
    """``"data/imdb::test"`` -> ``("data/imdb", "test")``; no ``::`` -> ``(spec, None)``."""
    text = str(spec)
    if SPLIT_SEP in text:
        base, _, split = text.rpartition(SPLIT_SEP)
        return base, split or None
    return text, None


class Source(ABC):
    """One place examples come from: a table, a text folder, a saved or a hub dataset."""

    kind = "source"

    def __init__(self, path: Path | str, split: str | None = None):
        self.path, self.split = path, split
        self.name = f"{path}{SPLIT_SEP}{split}" if split else str(path)

    def _refuse_split(self) -> None:
        """Files and text folders have no named splits."""
        if self.split:
            raise DataError(f"{self.name}: '{SPLIT_SEP}split' only applies to a saved `datasets` folder or a hub dataset")

    @abstractmethod
    def _table(self, limit: int | None):
        """The rows as a ``pyarrow.Table`` (each kind of source reads its own way)."""

    @abstractmethod
    def files(self) -> list[Path]:
        """Every file the rows come from: hashed for the tokenized-cache fingerprint."""

    def table(self, limit: int | None = None, columns: list[str] | None = None):
        """The rows as a ``pyarrow.Table``; ``columns`` must all be present (else a DataError)."""
        table = self._table(limit)
        if table.num_rows == 0:
            raise DataError(f"{self.name}: no rows")
        self.require_columns(table.column_names, columns or [])
        return table.slice(0, limit) if limit is not None else table

    def require_columns(self, present: list[str], columns: list[str]) -> None:
        """Raise a DataError naming the first of ``columns`` not in ``present``."""
        missing = [c for c in columns if c not in present]
        if missing:
            hint = ""
            if isinstance(self, TextFolderSource) and missing[0] == LABEL_COLUMN:
                hint = " (a text folder has labels only when it has one subfolder per class)"
            raise DataError(f"{self.name}: missing column {missing[0]!r}; columns present: {', '.join(present)}{hint}")

    def rows(self, limit: int | None = None, columns: list[str] | None = None) -> list[dict]:
        return self.table(limit, columns).to_pylist()

    def fingerprint(self) -> str:
        """sha256 over the bytes of every source file (and the split read): content, not paths,
        so moving a data folder keeps its cache entries valid while editing one byte does not."""
        digest = hashlib.sha256(f"{self.kind}\0{self.split or ''}\0".encode())
        files = sorted(self.files())
        base = Path(self.path) if Path(self.path).is_dir() else None
        for f in files:
            rel = f.relative_to(base).as_posix() if base is not None and f.is_relative_to(base) else ""
            digest.update(f"{rel}\0{f.stat().st_size}\0".encode())
            digest.update(file_sha256(f).encode())
        return digest.hexdigest()


def file_sha256(path: Path) -> str:
    # file_digest reads into one reused buffer: no per-block allocation, whatever the file size.
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class TableFileSource(Source):
    kind = "table"

    def __init__(self, path: Path, split: str | None = None):
        super().__init__(path, split)
        self._refuse_split()
        self.format = FORMATS.get(path.suffix.lower())
        if self.format is None:
            raise DataError(f"{path}: unsupported format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty")

    def files(self) -> list[Path]:
        return [self.path]

    def _table(self, limit):
        return _read_table(self.path, self.format)


class TextFolderSource(Source):
    """One example per file; subfolder names are labels. Sorted paths make row order stable."""

    kind = "text-folder"

    def __init__(self, path: Path, split: str | None = None):
        super().__init__(path, split)
        self._refuse_split()
        visible = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        classes = [p for p in visible if p.is_dir()]
        if classes:
            self.entries = [(f, d.name) for d in classes for f in _walk(d)]
        else:
            self.entries = [(f, None) for f in visible if f.is_file()]
        self.labelled = bool(classes)
        if not self.entries:
            raise DataError(f"{path}: the folder has no text files")

    def files(self) -> list[Path]:
        return [f for f, _ in self.entries]

    def _table(self, limit):
        return self.read_entries(self.entries[:limit] if limit is not None else self.entries)

    def read_entries(self, entries: list[tuple[Path, str | None]]):
        """The table of some of the folder's (file, label) entries."""
        import pyarrow as pa

        texts = []
        for f, _ in entries:
            try:
                # utf-8-sig drops a byte-order mark; the final newline of a file is not text.
                texts.append(f.read_bytes().decode("utf-8-sig").rstrip("\r\n"))
            except UnicodeDecodeError:
                raise DataError(f"{f}: not UTF-8 text (a text folder holds one UTF-8 text file per example)") from None
            except OSError as exc:
                raise DataError(f"{f}: cannot read: {exc.strerror or exc}") from None
        columns = {TEXT_COLUMN: pa.array(texts, pa.string())}
        if self.labelled:
            columns[LABEL_COLUMN] = pa.array([label for _, label in entries], pa.string())
        return pa.table(columns)


def _walk(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class DatasetSource(Source):
    """A ``datasets`` Dataset (saved to disk, or a hub name already in the local cache)."""

    def _select(self, obj):
        from datasets import DatasetDict, IterableDatasetDict

        if isinstance(obj, (DatasetDict, IterableDatasetDict)):
            split = self.split or "train"
            if split not in obj:
                raise DataError(f"{self.name}: no split {split!r}; splits: {', '.join(obj)} (pick one with 'path{SPLIT_SEP}split')")
            return obj[split]
        if self.split and self.kind == "saved-dataset":
            raise DataError(f"{self.name}: a single saved Dataset has no splits; drop '{SPLIT_SEP}{self.split}'")
        return obj

    def _table(self, limit):
        ds = self.dataset
        if limit is not None and limit < len(ds):
            ds = ds.select(range(limit))
        return self.slice_table(ds, 0, len(ds))

    def slice_table(self, ds, start: int, stop: int):
        """Rows ``start:stop`` of ``ds`` as Arrow (read from its memory-mapped files), labels as names."""
        import pyarrow as pa
        from datasets import ClassLabel

        table = ds.with_format("arrow")[start:stop]
        for name, feature in ds.features.items():
            if isinstance(feature, ClassLabel):  # ints -> the names the dataset gives them
                values = table.column(name).to_pylist()
                names = [feature.names[v] if v is not None and 0 <= v < len(feature.names) else None for v in values]
                table = table.set_column(table.schema.get_field_index(name), name, pa.array(names, pa.string()))
        return table

    def files(self) -> list[Path]:
        return [Path(f["filename"]) for f in self.dataset.cache_files]


class SavedDatasetSource(DatasetSource):
    kind = "saved-dataset"

    def __init__(self, path: Path, split: str | None = None):
        super().__init__(path, split)
        import datasets
        import pyarrow as pa

        try:
            obj = datasets.load_from_disk(str(path))
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot load as a saved `datasets` dataset: {_first_line(exc)}") from None
        self.dataset = self._select(obj)

    def files(self) -> list[Path]:
        # Every file of the folder: splits, states and infos all shape what is read.
        return _walk(self.path)


class HubDatasetSource(DatasetSource):
    kind = "hub-dataset"

    def __init__(self, name: str, split: str | None = None):
        super().__init__(name, split)
        import datasets

        try:
            with _offline():
                obj = datasets.load_dataset(name, split=split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "not available offline"
            raise DataError(
                f"{self.name}: no such file or folder, and `datasets` cannot load it offline "
                f"(leantrain never downloads data): {_first_line(exc)}"
            ) from None
        self.dataset = self._select(obj)


@contextmanager
def _offline():
    """Force the hub libraries offline for one call: a data name must never mean a download."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"))
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[2]


def open_source(spec: str | Path) -> Source:
    """The :class:`Source` for a path, ``path::split`` or hub dataset name."""
    base, split = split_spec(spec)
    path = Path(base).expanduser()
    if path.is_dir():
        if any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            return SavedDatasetSource(path, split)
        return TextFolderSource(path, split)
    if path.exists() and not path.is_file():
        raise DataError(f"data path is not a file or folder: {path}")
    if path.is_file():
        return TableFileSource(path, split)
    if path.suffix.lower() in FORMATS or not _HUB_NAME.match(base):
        raise MissingDataError(f"data file not found: {path}")
    return HubDatasetSource(base, split)


def read_rows(path: str | Path, limit: int | None = None, columns: list[str] | None = None) -> list[dict]:
    """Rows of ``path`` (any supported source) as dicts; ``columns`` must all be present."""
    return open_source(path).rows(limit, columns)


def read_table(path: str | Path, limit: int | None = None, columns: list[str] | None = None):
    """Like :func:`read_rows`, as a ``pyarrow.Table`` (keeps column types for writing back)."""
    return open_source(path).table(limit, columns)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_table(path: Path, kind: str):
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    try:
        if kind == "csv":
            # Strings stay strings: every column is read as text, so a label "01" stays
            # "01" (type inference would make it the int 1) and "NA" is not a null.
            with pa_csv.open_csv(path) as reader:
                names = reader.schema.names
            types = {name: pa.string() for name in names}
            return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=False))
        if kind == "json":
            return pa_json.read_json(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as {kind}: {_first_line(exc)}") from None


def write_table(table, path: str | Path) -> Path:
    """Write ``table`` as CSV, JSONL or Parquet (chosen by the suffix), atomically: a reader
    never sees half a file, and a failed write leaves any previous file intact."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported output format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if kind == "csv":
            pa_csv.write_csv(table, tmp)
        elif kind == "json":
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            pq.write_table(table, tmp)
        os.replace(tmp, path)
    except (pa.ArrowException, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write {kind}: {_first_line(exc)}") from None
    return path
