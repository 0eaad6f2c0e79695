"""Turn text tables into tokenized examples for classification or causal LM.

Tokenization truncates to ``max_length`` but never pads: padding happens per batch, to
the longest row of that batch, so short texts do not pay for long ones. With
``data.curate`` on, duplicate, junk and eval-leaking training rows are dropped before
tokenizing (no point paying to train on them). The result is cached on disk by a
fingerprint of every input (see ``cache.py``), so a second run tokenizes nothing.
"""
from __future__ import annotations

import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from leantrain.data import preference
from leantrain.data.chat import chat_template, conversation, encode_conversations, source_columns
from leantrain.data.cache import SHARD_ROWS, TokenCache, cache_root, fingerprint, tokenizer_fingerprint
from leantrain.data.curate import curate_texts
from leantrain.data.packing import PackedCollator, PackedExamples
from leantrain.data.shards import read_lengths
from leantrain.data.streaming import column_texts, stream_into
from leantrain.data.sources import Source, open_source, split_spec
from leantrain.errors import DataError


@dataclass
class TextData:
    train: list[dict]
    eval: list[dict]
    collate: Callable
    label_names: list[str] | None = None
    majority_label: int | None = None
    stats: dict = field(default_factory=dict)


class CausalLMCollator:
    """Pad a batch to its longest row; labels are the input ids, padding masked out (-100).

    Padding is found from the attention mask, not by token id: when the pad token is
    EOS (common for causal LMs), real EOS tokens must stay targets.
    """

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        self.tokenizer = tokenizer
        # Chat data carries its own labels: this pads them with -100 on the tokenizer's padding side.
        self.with_labels = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    def __call__(self, examples: list[dict]) -> dict:
        # Only ids and mask: decoder-only models take no token_type_ids (BERT-style
        # tokenizers emit them), and generate() rejects them.
        if "labels" in examples[0]:  # chat data: the targets were chosen per token (chat.py)
            return self.with_labels([{k: list(ex[k]) for k in ("input_ids", "attention_mask", "labels")} for ex in examples])
        rows = [{k: ex[k] for k in ("input_ids", "attention_mask") if k in ex} for ex in examples]
        batch = self.tokenizer.pad(rows, padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def _texts(rows: list[dict], column: str, source: str) -> list[str]:
    return column_texts([row[column] for row in rows], column, source)


def _label_names(labels: list[str]) -> list[str]:
    """Distinct labels, numerically sorted when they are all integers (so "10" follows "9")."""
    names = set(labels)
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    if n_eval >= len(rows):
        raise DataError(f"data.eval_fraction={fraction} leaves no training rows out of {len(rows)}")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def _resolve(spec: str, resolve: Callable) -> str:
    """Resolve the path part of ``path::split`` against the recipe; keep the split."""
    base, split = split_spec(spec)
    path = str(resolve(base))
    return f"{path}::{split}" if split else path


# Rows tokenized per call: large enough for the fast tokenizer's batching, small enough
# that a stop signal is honoured within a second or two of data preparation.
TOKENIZE_CHUNK = 4096


def load_text_data(data_cfg, task: str, tokenizer, seed: int, resolve: Callable,
                   check: Callable[[], None] = lambda: None) -> TextData:
    """Read, curate, split, label-map and tokenize the recipe's data section (or reuse the cache).

    ``check()`` is called between tokenization chunks: it raises to stop (preemption)."""
    if not data_cfg.train:
        raise DataError("data.train: no training file given")
    classify = task == "sequence-classification"
    if data_cfg.pack and task != "causal-lm":
        raise DataError(f"data.pack: packing joins documents into one row, which only causal-lm can train on (model.task is {task}); set data.pack: false")
    template = None
    if data_cfg.format != "text":
        if task != "causal-lm":
            raise DataError(f"data.format: {data_cfg.format} is chat data, which model.task: causal-lm trains on (model.task is {task})")
        if data_cfg.streaming:
            raise DataError(f"data.streaming reads data.format: text only (data.format is {data_cfg.format}); set data.streaming: false")
        template = chat_template(data_cfg, tokenizer, resolve, getattr(tokenizer, "name_or_path", "the model"))
        tokenizer.chat_template = template  # saved with the model: predict renders chats as training did
    train_src = open_source(_resolve(data_cfg.train, resolve))
    eval_src = open_source(_resolve(data_cfg.eval, resolve)) if data_cfg.eval else None
    if data_cfg.streaming:
        return _load_streaming(data_cfg, task, tokenizer, seed, train_src, eval_src, check)
    cache = key = None
    if data_cfg.cache:
        cache = TokenCache(cache_root(data_cfg.cache_dir))
        key = fingerprint(cache_inputs(data_cfg, task, tokenizer, seed, train_src, eval_src, template))
        entry = cache.load(key)
        if entry is not None:
            return _text_data(entry.train, entry.eval, entry.meta, tokenizer, data_cfg, classify, hit=True, key=key)
    train, evaluation, meta = _prepare(data_cfg, classify, tokenizer, seed, train_src, eval_src, check, template)
    if cache is not None:
        cache.store(key, train, evaluation, meta)
    return _text_data(train, evaluation, meta, tokenizer, data_cfg, classify, hit=False, key=key)


def _load_streaming(data_cfg, task: str, tokenizer, seed: int, train_src: Source, eval_src: Source | None,
                    check: Callable[[], None]) -> TextData:
    """Tokenize chunk by chunk into a cache entry (unless it exists), then map its shards."""
    if not data_cfg.cache:
        raise DataError("data.streaming needs data.cache: true (the cache's shards are where streamed tokens go)")
    classify = task == "sequence-classification"
    cache = TokenCache(cache_root(data_cfg.cache_dir))
    key = fingerprint(cache_inputs(data_cfg, task, tokenizer, seed, train_src, eval_src))
    entry = cache.open_mapped(key)
    hit = entry is not None
    if not hit:
        try:
            tmp = cache.new_entry(key)
        except OSError as exc:
            raise DataError(f"data.streaming: cannot write the tokenized cache in {cache.root}: {exc}") from None
        try:
            done = stream_into(tmp, data_cfg, classify, tokenizer, seed, train_src, eval_src, SHARD_ROWS, check)
            meta = {"label_names": None, "majority_label": None, "stats": done.stats}
            if classify:
                meta.update(label_meta(done.train_labels, done.eval_labels, data_cfg.label_column, train_src.name, (eval_src or train_src).name))
            cache.commit(tmp, key, done.splits, done.rows, done.columns, done.constant, meta)
        except OSError as exc:
            raise DataError(f"data.streaming: cannot write the tokenized cache in {cache.root}: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful commit (renamed)
        entry = cache.open_mapped(key, checksums=False)
        if entry is None:
            raise DataError(f"data.streaming: the tokenized cache entry just written in {cache.root} is unreadable")
    return _text_data(entry.train, entry.eval, entry.meta, tokenizer, data_cfg, classify, hit=hit, key=key)


def cache_inputs(data_cfg, task: str, tokenizer, seed: int, train_src: Source, eval_src: Source | None,
                 template: str | None = None) -> dict:
    """Everything that shapes the tokenized examples, and nothing else (irrelevant settings
    such as the seed when an eval file is given would only cause needless misses)."""
    import tokenizers

    split_by_seed = eval_src is None
    return {
        "train": {"kind": train_src.kind, "split": train_src.split, "content": train_src.fingerprint()},
        "eval": {"kind": eval_src.kind, "split": eval_src.split, "content": eval_src.fingerprint()} if eval_src else None,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "tokenizers_version": tokenizers.__version__,
        "task": task,
        "text_column": data_cfg.text_column,
        "label_column": data_cfg.label_column if task == "sequence-classification" else None,
        "max_length": data_cfg.max_length,
        "limit": data_cfg.limit,
        "eval_fraction": data_cfg.eval_fraction if split_by_seed else None,
        "seed": seed if split_by_seed else None,
        "curate": data_cfg.curate.model_dump() if data_cfg.curate.enabled else None,
        # Streaming holds eval rows out by a hash of their text, not by shuffling; and
        # writes labels as names: its entries are its own.
        **({"streaming": True} if data_cfg.streaming else {}),
        # Chat data: the format, its columns and masking, and the template text itself.
        # (Not the evaluation-time generation settings, which shape no token.)
        **({"chat": {"format": data_cfg.format, **data_cfg.chat.model_dump(exclude={"eval_generate", "max_new_tokens"}),
                     "template": template, **_pair_key(data_cfg)}} if template else {}),
    }


def _pair_key(data_cfg) -> dict:
    return {"preference": preference.cache_key(data_cfg)} if data_cfg.format == preference.PREFERENCE else {}


def row_columns(data_cfg, classify: bool = False) -> list[str]:
    """The columns a row of ``data.format`` is read from: a chat or preference file has no
    text column (the planner counts rows with the same columns a run reads)."""
    if data_cfg.format == preference.PREFERENCE:
        return preference.columns(data_cfg)
    if data_cfg.format != "text":
        return source_columns(data_cfg)
    return [data_cfg.text_column] + ([data_cfg.label_column] if classify else [])


def _conversation(row: dict, data_cfg, where: str) -> dict:
    return {"turns": conversation(row, data_cfg, where), "where": where}


def _prepare(data_cfg, classify: bool, tokenizer, seed: int, train_src: Source, eval_src: Source | None,
             check: Callable[[], None] = lambda: None, template: str | None = None):
    """The uncached path: rows -> split -> curation -> tokens and labels, plus stats."""
    pairs = data_cfg.format == preference.PREFERENCE  # a prompt with a chosen and a rejected response
    columns = row_columns(data_cfg, classify)
    record = preference.pair if pairs else _conversation

    def read(src: Source) -> list[dict]:
        rows = src.rows(data_cfg.limit, columns)
        if not template:
            return rows
        # Checked and converted before the split, so an error names the row of the file.
        return [record(row, data_cfg, f"{src.name}: row {i + 1}") for i, row in enumerate(rows)]

    def texts_of(rows: list[dict], source: str) -> list[str]:
        if template:
            return ["\n".join(t["content"] for t in r["turns"]) for r in rows]
        return _texts(rows, data_cfg.text_column, source)

    train_rows = read(train_src)
    if eval_src is not None:
        eval_rows = read(eval_src)
    else:
        # Split before curating: the eval set is then the same with curation on or off,
        # so the two runs are measured on the same rows.
        train_rows, eval_rows = _split(train_rows, data_cfg.eval_fraction, seed)
    eval_name = (eval_src or train_src).name
    rows_in = len(train_rows) + len(eval_rows)
    curation = None
    if data_cfg.curate.enabled:
        train_texts = texts_of(train_rows, train_src.name)
        eval_texts = texts_of(eval_rows, eval_name)
        keep, report = curate_texts(train_texts, data_cfg.curate, eval_texts)
        curation = report.to_dict()
        curation.pop("examples")
        if not keep:
            raise DataError(f"{train_src.name}: curation removed every training row ({curation['removed_by_reason']})")
        train_rows = [train_rows[i] for i in keep]

    chat_counts: dict[str, int] = {}

    def encode(rows: list[dict], source: str) -> list[dict]:
        if not rows:  # eval_fraction: 0 holds nothing out (tokenizers fail on an empty batch)
            return []
        if template:
            return encode_chat(rows)
        texts = _texts(rows, data_cfg.text_column, source)
        examples: list[dict] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            check()
            enc = tokenizer(texts[start : start + TOKENIZE_CHUNK], truncation=True, max_length=data_cfg.max_length)
            examples += [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]
        return examples

    def encode_chat(rows: list[dict]) -> list[dict]:
        examples: list[dict] = []
        for start in range(0, len(rows), TOKENIZE_CHUNK):
            check()
            chunk = rows[start : start + TOKENIZE_CHUNK]
            if pairs:
                encoded, counts = preference.encode_pairs(tokenizer, chunk, template, data_cfg.max_length)
            else:
                encoded, counts = encode_conversations(tokenizer, [r["turns"] for r in chunk], template, data_cfg.max_length,
                                                       data_cfg.chat.train_on_inputs, [r["where"] for r in chunk])
            examples += [ex for ex in encoded if ex is not None]
            for name, value in counts.items():
                chat_counts[name] = chat_counts.get(name, 0) + value
        return examples

    train, evaluation = encode(train_rows, train_src.name), encode(eval_rows, eval_name)
    if template and not train:
        raise DataError(f"{train_src.name}: data.max_length={data_cfg.max_length} truncates away the answer of every training "
                        "conversation; raise data.max_length")
    duplicates = sum(curation[k] for k in ("exact_duplicates", "near_duplicates", "eval_overlap")) if curation else 0
    stats = {
        "rows_in": rows_in,
        "rows_out": len(train) + len(evaluation),
        "rows_train": len(train),
        "rows_eval": len(evaluation),
        "duplicates_removed": duplicates,
        "curation": curation,
    }
    if template:
        # Examples whose answer truncation removed entirely are dropped (and counted), not
        # trained on as prompt-only rows with nothing to learn.
        stats["chat"] = {"format": data_cfg.format, **chat_counts,
                         "target_fraction": round(chat_counts["target_tokens"] / max(chat_counts["tokens"], 1), 4)}
    meta = {"label_names": None, "majority_label": None, "stats": stats}
    if classify:
        meta.update(_label(train, evaluation, train_rows, eval_rows, data_cfg.label_column, train_src.name, eval_name))
    return train, evaluation, meta


def _label(train, evaluation, train_rows, eval_rows, column: str, train_name: str, eval_name: str) -> dict:
    """Map label strings to ids (in place on the examples); the names and majority class."""
    train_labels = [str(r[column]) for r in train_rows]
    meta = label_meta(Counter(train_labels), {str(r[column]) for r in eval_rows}, column, train_name, eval_name)
    index = {name: i for i, name in enumerate(meta["label_names"])}
    for ex, label in zip(train, train_labels):
        ex["labels"] = index[label]
    for ex, row in zip(evaluation, eval_rows):
        ex["labels"] = index[str(row[column])]
    return meta


def label_meta(train_counts: Counter, eval_labels: set, column: str, train_name: str, eval_name: str) -> dict:
    """Label names (sorted; numerically when all integers) and the majority class, checked."""
    names = _label_names(list(train_counts))
    if len(names) < 2:
        raise DataError(f"{train_name}: label column {column!r} has only one class ({names[0]!r})")
    unknown = sorted(eval_labels - set(names))
    if unknown:
        raise DataError(f"{eval_name}: eval label {unknown[0]!r} never appears in the training data")
    # most_common breaks ties by first occurrence, as counting the rows in order does.
    return {"label_names": names, "majority_label": names.index(train_counts.most_common(1)[0][0])}


def _text_data(train, evaluation, meta: dict, tokenizer, data_cfg, classify: bool, hit: bool, key: str | None) -> TextData:
    from transformers import DataCollatorWithPadding

    stats = {**meta["stats"], "cache_hit": hit, "cache_key": key}
    if classify:
        return TextData(train, evaluation, DataCollatorWithPadding(tokenizer), meta["label_names"], meta["majority_label"], stats)
    if data_cfg.format == preference.PREFERENCE:
        train, evaluation = preference.PairExamples(train), preference.PairExamples(evaluation)
    train_lengths = read_lengths(train)  # from the storage when it knows them
    stats["tokens_train"] = sum(train_lengths)  # a language model's data size (its model card)
    if data_cfg.format == preference.PREFERENCE:
        return TextData(train, evaluation, preference.PreferenceCollator(tokenizer.pad_token_id), stats=stats)
    if not data_cfg.pack:
        return TextData(train, evaluation, CausalLMCollator(tokenizer), stats=stats)
    # Packed after the cache (deterministically), so packing on or off shares one entry.
    train = PackedExamples(train, train_lengths, data_cfg.max_length)
    evaluation = PackedExamples(evaluation, read_lengths(evaluation), data_cfg.max_length)
    stats["packing"] = {"documents": train.n_documents, "rows": len(train), "eval_documents": evaluation.n_documents, "eval_rows": len(evaluation)}
    return TextData(train, evaluation, PackedCollator(tokenizer.pad_token_id), stats=stats)

