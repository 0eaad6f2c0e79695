"""Read a table of examples from CSV, JSONL or Parquet into a list of row dicts.

pyarrow does the parsing for all three formats (fast, typed, one dependency); every
failure is turned into a one-line :class:`DataError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

from leantrain.errors import DataError

FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet"}


def read_rows(path: str | Path, limit: int | None = None, columns: list[str] | None = None) -> list[dict]:
    """Rows of ``path`` as dicts; ``columns`` must all be present (else a DataError)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    table = _read_table(path, kind)
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows")
    missing = [c for c in columns or [] if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column {missing[0]!r}; columns present: {', '.join(table.column_names)}"
        )
    if limit is not None:
        table = table.slice(0, limit)
    return table.to_pylist()


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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read as {kind}: {first}") from None
