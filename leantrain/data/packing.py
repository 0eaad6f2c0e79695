"""Sequence packing for causal LM: several documents per row, attention kept within each.

Short documents padded to the longest row of a batch waste compute on padding; packing
puts documents end to end into rows of ``data.max_length`` tokens instead. Three things
keep a packed row equivalent to its documents run one by one:

* ``position_ids`` restart at 0 at every document, so rotary/learned positions are the
  ones each document would get alone;
* attention is block-diagonal-causal. transformers 5 (checked on 5.23) builds that
  mask itself from ``position_ids`` (``masking_utils.find_packed_sequence_indices``) for
  eager and sdpa attention, but only when no 2-D ``attention_mask`` is given *and* no
  KV cache is in use. So the batches carry no attention mask (padding at the end of a
  row is one more "document" whose positions restart at 0, which real tokens never see)
  and ask for ``use_cache=False``; :func:`check_model_packs` verifies on the actual model
  that a packed row gives the same logits as its documents alone, and refuses otherwise;
* labels are -100 on each document's first token (nothing is predicted across a
  boundary) and on padding, so the loss counts exactly the targets of unpacked training.

Rows are formed once, deterministically (best-fit decreasing, ties by document index),
from the cached tokenized documents: packing is not part of the tokenized cache's key,
and a packed row is an ordinary example for the seeded, resumable batch order.
"""
from __future__ import annotations

from typing import Sequence

import torch

from leantrain.errors import DataError

IGNORE_INDEX = -100


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Document indices of each packed row, best-fit decreasing: each document (longest
    first) goes into the open row whose free space fits it most tightly."""
    if capacity < 1:
        raise DataError(f"data.max_length must be positive to pack rows, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    # open_by_space[s]: rows with exactly s free token slots (a stack; newest on top).
    open_by_space: list[list[int]] = [[] for _ in range(capacity + 1)]
    for doc in order:
        size = lengths[doc]
        if size > capacity:
            raise DataError(f"a document of {size} tokens does not fit data.max_length={capacity}")
        space = next((s for s in range(size, capacity + 1) if open_by_space[s]), None)
        if space is None:
            rows.append([])
            row, space = len(rows) - 1, capacity
        else:
            row = open_by_space[space].pop()
        rows[row].append(doc)
        open_by_space[space - size].append(row)
    return rows


class PackedExamples(Sequence):
    """Packed rows over any sequence of tokenized documents, built on access (documents may
    be memory-mapped): row ``i`` is ``{"input_ids": [...], "doc_lengths": [...]}``."""

    def __init__(self, documents: Sequence, doc_lengths: Sequence[int], capacity: int):
        self.documents = documents
        self.rows = pack_rows(doc_lengths, capacity)
        self.row_lengths = [sum(doc_lengths[d] for d in row) for row in self.rows]
        self.n_documents = len(doc_lengths)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        ids: list[int] = []
        labels: list[int] = []
        sizes = []
        for doc in self.rows[index]:
            document = self.documents[doc]
            ids += list(document["input_ids"])
            if "labels" in document:  # chat data carries its own targets; text's are its ids
                labels += list(document["labels"])
            sizes.append(len(document["input_ids"]))
        return {"input_ids": ids, "doc_lengths": sizes, **({"labels": labels} if labels else {})}

    def lengths(self) -> list[int]:
        return self.row_lengths


def packed_token_fraction(row_lengths: Sequence[int], capacity: int) -> float:
    """Share of a packed epoch's token slots that are padding if every row had ``capacity``."""
    return 1.0 - sum(row_lengths) / (capacity * len(row_lengths)) if row_lengths else 0.0


class PackedCollator:
    """Pad packed rows to the batch's longest; per-document positions; boundary-free labels."""

    def __init__(self, pad_token_id: int | None):
        self.pad_token_id = pad_token_id if pad_token_id is not None else 0

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            used = len(row["input_ids"])
            ids = torch.tensor(row["input_ids"], dtype=torch.long)
            input_ids[r, :used] = ids
            labels[r, :used] = torch.tensor(row["labels"], dtype=torch.long) if "labels" in row else ids
            start = 0
            for size in row["doc_lengths"]:
                positions[r, start : start + size] = torch.arange(size)
                labels[r, start] = IGNORE_INDEX
                start += size
            # Padding restarts at position 0: its own block, after (so never seen by) real tokens.
            positions[r, used:] = torch.arange(width - used)
        return {"input_ids": input_ids, "position_ids": positions, "labels": labels, "use_cache": False}


@torch.no_grad()
def check_model_packs(model, vocab_size: int | None = None) -> None:
    """Refuse a model whose attention crosses document boundaries inside a packed row.

    Two short random documents are run alone and packed; the packed logits must match
    (a model that ignores ``position_ids`` for masking would let the second document
    see the first). Costs three tiny forward passes at start-up."""
    was_training = model.training
    model.eval()
    try:
        vocab = vocab_size or model.get_input_embeddings().num_embeddings
        generator = torch.Generator().manual_seed(0)
        first, second = (torch.randint(1, vocab, (1, n), generator=generator) for n in (5, 7))
        device = next(model.parameters()).device
        first, second = first.to(device), second.to(device)
        alone = [model(input_ids=doc, use_cache=False).logits for doc in (first, second)]
        batch = PackedCollator(0)([{"input_ids": torch.cat([first, second], 1)[0].tolist(), "doc_lengths": [5, 7]}])
        packed = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device), use_cache=False).logits
        gap = max((packed[:, :5] - alone[0]).abs().max().item(), (packed[:, 5:] - alone[1]).abs().max().item())
        scale = max(alone[0].abs().max().item(), alone[1].abs().max().item(), 1.0)
    finally:
        model.train(was_training)
    if gap > 1e-3 * scale:
        raise DataError(
            f"data.pack: {type(model).__name__} lets packed documents attend to each other "
            f"(logits differ by {gap:.3g} from running them alone); set data.pack: false for this model"
        )
