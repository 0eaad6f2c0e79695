"""Tokenized examples in Arrow IPC shards: written chunk by chunk, read memory-mapped.

Streaming preparation (``streaming.py``) appends each tokenized chunk to the current
shard of its split as one record batch, so the tokens of a data set never sit in memory
together. :class:`MappedExamples` reads them back as a random-access sequence whose rows
are built on access from memory-mapped files: the operating system pages shards in and
out, and only the row offsets (one integer per example) live on the Python heap.
"""
from __future__ import annotations

import bisect
from pathlib import Path
from typing import Sequence

# Arrow element type of each token column; vocabularies fit int32, masks and segment ids 0/1.
LIST_TYPES = {"input_ids": "int32", "labels": "int32", "attention_mask": "int8", "token_type_ids": "int8", "special_tokens_mask": "int8"}


def column_type(name: str, sample):
    """The Arrow type a column is stored as, from its name and one value of it."""
    import pyarrow as pa

    if isinstance(sample, list):
        return pa.list_(getattr(pa, LIST_TYPES.get(name, "int64"))())
    if isinstance(sample, str):
        return pa.string()
    return pa.int64()


class ShardWriter:
    """Append column chunks to ``folder/<split>-NNNNN.arrow`` files of at most ``shard_rows`` rows."""

    def __init__(self, folder: Path, split: str, shard_rows: int):
        self.folder, self.split, self.shard_rows = Path(folder), split, shard_rows
        self.names: list[str] = []
        self.rows = 0
        self.schema = None
        self._sink = self._writer = None
        self._in_shard = 0

    def write(self, columns: dict[str, list]) -> None:
        import pyarrow as pa

        n = len(next(iter(columns.values()), []))
        if n == 0:
            return
        if self.schema is None:
            self.schema = pa.schema([pa.field(name, column_type(name, values[0])) for name, values in columns.items()])
        start = 0
        while start < n:
            if self._writer is None or self._in_shard >= self.shard_rows:
                self._open_next()
            take = min(n - start, self.shard_rows - self._in_shard)
            arrays = [pa.array(columns[f.name][start : start + take], f.type) for f in self.schema]
            self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
            self._in_shard += take
            self.rows += take
            start += take

    def _open_next(self) -> None:
        import pyarrow as pa

        self._close_current()
        name = f"{self.split}-{len(self.names):05d}.arrow"
        self._sink = pa.OSFile(str(self.folder / name), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self.names.append(name)
        self._in_shard = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self) -> list[str]:
        self._close_current()
        return self.names


class MappedExamples(Sequence):
    """Examples of one split, read on access from memory-mapped shards.

    ``constant`` columns (one value everywhere) are rebuilt as ``[value] * length``;
    string ``labels`` are mapped to their index in ``label_names``. Picklable for
    DataLoader workers: each process maps the files itself."""

    def __init__(self, paths: list[Path], columns: list[str], constant: dict | None = None, label_names: list[str] | None = None):
        self.paths, self.columns, self.constant = [str(p) for p in paths], columns, constant or {}
        self.label_index = {name: i for i, name in enumerate(label_names)} if label_names else None
        self._tables = None
        self._starts = [0]
        for table in self._open():
            self._starts.append(self._starts[-1] + table.num_rows)

    def _open(self) -> list:
        import pyarrow as pa

        if self._tables is None:
            self._tables = [pa.ipc.open_file(pa.memory_map(p, "r")).read_all() for p in self.paths]
        return self._tables

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": None}

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self._starts, index) - 1
        table, row = self._open()[shard], index - self._starts[shard]
        example = {name: table.column(name)[row].as_py() for name in self.columns if name not in self.constant}
        for name, value in self.constant.items():
            example[name] = [value] * len(example["input_ids"])
        if self.label_index is not None and isinstance(example.get("labels"), str):
            example["labels"] = self.label_index[example["labels"]]
        return {name: example[name] for name in self.columns}

    def lengths(self) -> list[int]:
        """Tokens per example, from the Arrow list offsets: no example is built."""
        import pyarrow.compute as pc

        lengths: list[int] = []
        for table in self._open():
            lengths += pc.list_value_length(table.column("input_ids")).to_pylist()
        return lengths


def read_lengths(examples: Sequence) -> list[int]:
    """Token count of every example, from the storage when it knows them (memory-mapped
    shards, packed rows) rather than by building each example."""
    known = getattr(examples, "lengths", None)
    if callable(known):
        return list(known())
    return [len(ex["input_ids"]) for ex in examples]
