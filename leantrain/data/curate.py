"""Data curation: drop empty, degenerate and duplicate rows before paying to train on them.

Exact duplicates are found after normalisation (Unicode NFKC, case folding, collapsed
white space); near duplicates with MinHash LSH over word shingles (``datasketch``).
Both keep the first occurrence, so results are deterministic. Every removal is counted
by reason, with a few examples, so the user can see what went.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

_SPACE = re.compile(r"\s+")
EXAMPLES_PER_REASON = 3


class CurateSettings(BaseModel):
    """The ``data.curate`` recipe section (also the options of `leantrain data dedup`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(
        True,
        description="Curate the training data before tokenizing. A recipe has no curation unless it says `curate: true` (these defaults) or gives the section.",
    )
    exact_dedup: bool = Field(True, description="Drop rows whose normalised text (NFKC, case-folded, white space collapsed) was seen before.")
    near_dedup: float | None = Field(
        0.8, gt=0, le=1, description="Drop rows whose word-shingle Jaccard similarity to an earlier row is at least this (MinHash LSH); null disables."
    )
    shingle_words: int = Field(3, ge=1, description="Words per shingle for near-duplicate detection.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more is more precise and slower.")
    min_chars: int = Field(1, ge=0, description="Drop rows shorter than this (after stripping).")
    max_chars: int | None = Field(None, ge=1, description="Drop rows longer than this; null keeps all.")
    min_alpha_fraction: float = Field(0.25, ge=0, le=1, description="Drop rows where letters are less than this share of non-space characters (tables, binary junk).")
    remove_eval_overlap: bool = Field(True, description="Drop training rows that duplicate (exactly or nearly) an eval row: leakage.")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, size: int) -> set[bytes]:
    words = normalize(text).split(" ")
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


@dataclass
class CurationReport:
    input_rows: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, text: str) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(text[:200])

    def to_dict(self) -> dict:
        filtered = sum(v for k, v in self.removed.items() if k in ("empty", "too_short", "too_long", "non_text"))
        dropped = sum(self.removed.values())
        return {
            "input_rows": self.input_rows,
            "exact_duplicates": self.removed.get("exact_duplicate", 0),
            "near_duplicates": self.removed.get("near_duplicate", 0),
            "eval_overlap": self.removed.get("eval_overlap", 0),
            "filtered": filtered,
            "removed_by_reason": dict(self.removed),
            "kept_rows": self.input_rows - dropped,
            "examples": self.examples,
        }


def filter_reason(text: str, cfg: CurateSettings) -> str | None:
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and len(stripped) > cfg.max_chars:
        return "too_long"
    visible = [c for c in stripped if not c.isspace()]
    if sum(c.isalpha() for c in visible) < cfg.min_alpha_fraction * len(visible):
        return "non_text"
    return None


class NearDuplicateIndex:
    """MinHash LSH over word shingles; ``seen_before`` answers and remembers in one call."""

    def __init__(self, threshold: float, num_perm: int, shingle_words: int):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.size = threshold, num_perm, shingle_words
        # Every LSH candidate is confirmed against the threshold below, so a false
        # candidate costs one signature comparison while a missed one is a duplicate
        # kept: tune the bands for recall (weights = false positive, false negative).
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self.hashes: dict[int, object] = {}

    def signature(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch(list(shingles(text, self.size)))
        return m

    def matches(self, m) -> bool:
        # LSH returns candidates; confirm with the estimated Jaccard to cut false positives.
        return any(self.hashes[key].jaccard(m) >= self.threshold for key in self.lsh.query(m))

    def add(self, key: int, m) -> None:
        self.lsh.insert(key, m)
        self.hashes[key] = m


class Curator:
    """Curation one row at a time, for data read in chunks (streaming) as for whole lists.

    What it remembers is small per row: a 16-byte digest of each kept row's normalised
    text (exact dedup) and, with near dedup on, each kept row's MinHash signature in the
    LSH index (``num_perm`` x 8 bytes, about 1 KB at the default 128)."""

    def __init__(self, cfg: CurateSettings):
        self.cfg, self.report = cfg, CurationReport()
        self.seen: set[bytes] = set()
        self.eval_exact: set[bytes] = set()
        self.eval_index = None
        self.index = NearDuplicateIndex(cfg.near_dedup, cfg.num_perm, cfg.shingle_words) if cfg.near_dedup else None
        self.eval_rows = 0

    def add_eval(self, texts: list[str]) -> None:
        """Remember eval rows, so that training rows leaking them are removed (call first)."""
        if not self.cfg.remove_eval_overlap:
            return
        for text in texts:
            self.eval_exact.add(_digest(normalize(text)))
            if self.cfg.near_dedup:
                if self.eval_index is None:
                    self.eval_index = NearDuplicateIndex(self.cfg.near_dedup, self.cfg.num_perm, self.cfg.shingle_words)
                self.eval_index.add(self.eval_rows, self.eval_index.signature(text))
            self.eval_rows += 1

    def keep(self, text: str, key: int) -> bool:
        """Whether training row ``key`` (unique, increasing) survives; the report counts drops."""
        cfg, index, eval_index = self.cfg, self.index, self.eval_index
        self.report.input_rows += 1
        reason = filter_reason(text, cfg)
        norm = _digest(normalize(text))
        if reason is None and norm in self.eval_exact:
            reason = "eval_overlap"
        if reason is None and cfg.exact_dedup and norm in self.seen:
            reason = "exact_duplicate"
        signature = None
        if reason is None and (index or eval_index):
            signature = (index or eval_index).signature(text)
            if eval_index and eval_index.matches(signature):
                reason = "eval_overlap"
            elif index and index.matches(signature):
                reason = "near_duplicate"
        if reason:
            self.report.drop(reason, text)
            return False
        self.seen.add(norm)
        if index is not None:
            index.add(key, signature)
        return True


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def curate_texts(texts: list[str], cfg: CurateSettings, eval_texts: list[str] | None = None) -> tuple[list[int], CurationReport]:
    """Indices of the rows to keep (in order) and the report of what was removed."""
    curator = Curator(cfg)
    curator.add_eval(eval_texts or [])
    keep = [i for i, text in enumerate(texts) if curator.keep(text, i)]
    return keep, curator.report
