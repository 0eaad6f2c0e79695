"""Data larger than memory: read, curate and tokenize chunk by chunk straight into shards.

With ``data.streaming`` the sources are read a chunk at a time (pyarrow's streaming CSV
reader, Parquet row-group batches, line by line for JSONL, slices of a memory-mapped
``datasets`` table, a few files of a text folder at a time), each chunk is curated and
tokenized and appended to the cache entry's Arrow shards, then dropped. Neither the raw
text nor the tokens of the whole data set are ever in memory together; training reads
the shards memory-mapped (:class:`leantrain.data.shards.MappedExamples`).

What is kept in memory is small per row: curation's 16-byte digests and MinHash
signatures (see :class:`leantrain.data.curate.Curator`), and label counts.

Without an ``eval`` file the held-out rows cannot be drawn by shuffling all row indices
(that needs them all first), so a row is held out when a hash of (seed, its text) falls
below ``eval_fraction``: deterministic, independent of row order and chunking, about the
requested share, and exact duplicates always land on the same side. Eval rows are read
in a first pass so that curation knows them all before it judges any training row.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from leantrain.data.curate import Curator
from leantrain.data.shards import ShardWriter
from leantrain.data.sources import DatasetSource, Source, TableFileSource, TextFolderSource
from leantrain.errors import DataError

CHUNK_ROWS = 4096  # rows tokenized at once: the fast tokenizer batches well, memory stays small
CSV_BLOCK_BYTES = 1 << 20


def column_texts(values: list, column: str, source: str, first_row: int = 0) -> list[str]:
    """The text column as strings; a missing value is an error naming its (1-based) row."""
    for i, value in enumerate(values):
        if value is None:
            raise DataError(f"{source}: row {first_row + i + 1} has no value in text column {column!r}")
    return [str(v) for v in values]


def held_out(text: str, seed: int, fraction: float) -> bool:
    """Whether a row goes to eval: a seeded hash of its text, below ``fraction``."""
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def read_chunks(source: Source, columns: list[str], limit: int | None = None, chunk_rows: int | None = None) -> Iterator[dict[str, list]]:
    """``{column: values}`` for successive chunks of ``source`` (at most ``limit`` rows in all)."""
    left = limit
    total = 0
    with closing(_chunks(source, columns, chunk_rows or CHUNK_ROWS)) as chunks:
        for chunk in chunks:
            n = len(chunk[columns[0]])
            if left is not None and n > left:
                chunk, n = {c: v[:left] for c, v in chunk.items()}, left
            if n:
                yield chunk
            total += n
            if left is not None:
                left -= n
                if left <= 0:
                    break
    if total == 0:
        raise DataError(f"{source.name}: no rows")


def _chunks(source: Source, columns: list[str], chunk_rows: int) -> Iterator[dict[str, list]]:
    if isinstance(source, TableFileSource):
        readers = {"csv": _csv_chunks, "json": _jsonl_chunks, "parquet": _parquet_chunks}
        yield from readers[source.format](source, columns, chunk_rows)
    elif isinstance(source, TextFolderSource):
        for start in range(0, len(source.entries), chunk_rows):
            table = source.read_entries(source.entries[start : start + chunk_rows])
            source.require_columns(table.column_names, columns)
            yield {c: table.column(c).to_pylist() for c in columns}
    elif isinstance(source, DatasetSource):  # memory-mapped Arrow already: read it in slices
        ds = source.dataset
        source.require_columns(list(ds.column_names), columns)
        for start in range(0, len(ds), chunk_rows):
            table = source.slice_table(ds, start, start + chunk_rows)
            yield {c: table.column(c).to_pylist() for c in columns}
    else:
        raise DataError(f"{source.name}: data.streaming cannot read a {source.kind} source")


def _csv_chunks(source: TableFileSource, columns: list[str], chunk_rows: int):
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:
        with pa_csv.open_csv(source.path) as probe:
            names = probe.schema.names
        source.require_columns(names, columns)
        # Every column is text, as in the whole-file reader: a label "01" stays "01".
        convert = pa_csv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False, include_columns=columns)
        with pa_csv.open_csv(source.path, read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=convert) as reader:
            for batch in reader:
                yield {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{source.path}: cannot read as csv: {str(exc).strip().splitlines()[0]}") from None


def _jsonl_chunks(source: TableFileSource, columns: list[str], chunk_rows: int):
    rows: list[dict] = []
    with open(source.path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{source.path}: line {number} is not a JSON object: {exc}") from None
            if not isinstance(row, dict):
                raise DataError(f"{source.path}: line {number} is not a JSON object")
            if not rows:
                source.require_columns(list(row), columns)
            rows.append(row)
            if len(rows) == chunk_rows:
                yield {c: [r.get(c) for r in rows] for c in columns}
                rows = []
    if rows:
        yield {c: [r.get(c) for r in rows] for c in columns}


def _parquet_chunks(source: TableFileSource, columns: list[str], chunk_rows: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(source.path) as parquet:
            source.require_columns(parquet.schema_arrow.names, columns)
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
                yield {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{source.path}: cannot read as parquet: {str(exc).strip().splitlines()[0]}") from None


@dataclass
class Streamed:
    """What streaming wrote into an entry folder, for the cache manifest and metadata."""

    splits: dict[str, list[str]]
    rows: list[int]
    columns: list[str]
    stats: dict
    constant: dict = field(default_factory=lambda: {"attention_mask": 1})
    train_labels: Counter = field(default_factory=Counter)
    eval_labels: set = field(default_factory=set)


def stream_into(folder: Path, data_cfg, classify: bool, tokenizer, seed: int, train_src: Source,
                eval_src: Source | None, shard_rows: int, check: Callable[[], None] = lambda: None) -> Streamed:
    """Read, split, curate and tokenize chunk by chunk into ``folder``'s shards."""
    text, label = data_cfg.text_column, data_cfg.label_column
    columns = [text] + ([label] if classify else [])
    curator = Curator(data_cfg.curate) if data_cfg.curate.enabled else None
    writers = {split: ShardWriter(folder, split, shard_rows) for split in ("train", "eval")}
    streamed = Streamed({}, [], [], {})
    by_hash = eval_src is None and data_cfg.eval_fraction > 0

    def write(split: str, chunk: dict[str, list], texts: list[str], keep: list[int]) -> None:
        if not keep:
            return
        # Unpadded rows attend to every token: the mask is stored as a constant, not per token.
        encoded = dict(tokenizer([texts[i] for i in keep], truncation=True, max_length=data_cfg.max_length, return_attention_mask=False))
        if classify:
            labels = [str(chunk[label][i]) for i in keep]
            encoded["labels"] = labels
            if split == "train":
                streamed.train_labels.update(labels)
            else:
                streamed.eval_labels.update(labels)
        writers[split].write(encoded)

    # Pass 1, eval rows: curation must know every one of them before judging training rows.
    eval_name = (eval_src or train_src).name
    rows_eval_in = 0
    if eval_src is not None or by_hash:
        first = 0
        for chunk in read_chunks(eval_src or train_src, columns, data_cfg.limit):
            check()
            texts = column_texts(chunk[text], text, eval_name, first)
            first += len(texts)
            keep = [i for i, t in enumerate(texts) if eval_src is not None or held_out(t, seed, data_cfg.eval_fraction)]
            if curator is not None:
                curator.add_eval([texts[i] for i in keep])
            write("eval", chunk, texts, keep)
            rows_eval_in += len(keep)
    # Pass 2, training rows.
    first = 0
    for chunk in read_chunks(train_src, columns, data_cfg.limit):
        check()
        texts = column_texts(chunk[text], text, train_src.name, first)
        candidates = [i for i, t in enumerate(texts) if not (by_hash and held_out(t, seed, data_cfg.eval_fraction))]
        keep = [i for i in candidates if curator.keep(texts[i], first + i)] if curator is not None else candidates
        first += len(texts)
        write("train", chunk, texts, keep)
    rows_train_in = curator.report.input_rows if curator is not None else None

    streamed.splits = {split: writer.close() for split, writer in writers.items()}
    streamed.rows = [writers["train"].rows, writers["eval"].rows]
    if streamed.rows[0] == 0:
        why = "curation removed every training row" if curator is not None else "no training rows"
        raise DataError(f"{train_src.name}: {why}" + (f" ({curator.report.removed})" if curator is not None else ""))
    streamed.columns = list(writers["train"].schema.names) + ["attention_mask"]
    curation = None
    if curator is not None:
        curation = curator.report.to_dict()
        curation.pop("examples")
    duplicates = sum(curation[k] for k in ("exact_duplicates", "near_duplicates", "eval_overlap")) if curation else 0
    rows_train_in = rows_train_in if rows_train_in is not None else streamed.rows[0]
    streamed.stats = {
        "rows_in": rows_train_in + rows_eval_in,
        "rows_out": sum(streamed.rows),
        "rows_train": streamed.rows[0],
        "rows_eval": streamed.rows[1],
        "duplicates_removed": duplicates,
        "curation": curation,
        "streaming": True,
        "eval_split": "file" if eval_src is not None else ("text hash" if by_hash else "none"),
    }
    return streamed
