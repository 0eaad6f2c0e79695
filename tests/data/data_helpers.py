"""Helpers shared by the data-pipeline tests (imported by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

from testdata import write_rows  # noqa: F401  (re-exported for the data tests)
from leantrain.data.text import load_text_data
from leantrain.recipe import DataSection


def load(tokenizer, task="sequence-classification", seed=0, **data):
    """``load_text_data`` with a DataSection built from keyword arguments."""
    return load_text_data(DataSection(**data), task, tokenizer, seed, lambda p: Path(p))


def ids(examples: list[dict]) -> list[tuple]:
    return [tuple(ex["input_ids"]) for ex in examples]


class CallCounter:
    """Counts calls of a tokenizer. ``tok(...)`` looks ``__call__`` up on the class, so the
    class is patched (through pytest's monkeypatch, undone after the test)."""

    def __init__(self, tokenizer, monkeypatch):
        self.calls = 0
        cls = type(tokenizer)
        original = cls.__call__

        def counting(tok, *args, **kwargs):
            self.calls += 1
            return original(tok, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", counting)

    def take(self) -> int:
        n, self.calls = self.calls, 0
        return n
