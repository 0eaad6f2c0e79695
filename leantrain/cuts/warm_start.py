"""Warm start: initialise an embedding matrix from pretrained vectors before training.

Why: a model trained from scratch (or a new vocabulary) spends its first steps
discovering what words mean. Vectors learned elsewhere (word2vec/GloVe files, a numpy
or safetensors matrix, another model's embeddings) put that knowledge in at step 0, so
a target loss is reached in fewer steps; with ``freeze`` the embedding gets neither
gradients nor optimizer states at all.

Rows are matched to the model's vocabulary by token string (exact, lowercase, then
without a subword marker such as WordPiece ``##``); matrices are taken row-for-row.
Rows the source does not cover keep the model's own random init, rescaled to the mean
and std of the copied vectors so that both kinds of rows live on one scale.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from leantrain.cuts.base import Cut, CutConfig, register
from leantrain.errors import UserError

KEY = "cuts.warm_start"
# Prefixes that mark a subword piece (WordPiece "##") or a word start (SentencePiece "▁",
# byte-level BPE "Ġ"); a token without them is looked up as a plain word.
MARKERS = ("##", "\u2581", "\u0120")


class WarmStartSettings(CutConfig):
    shorthand_field = "source"
    source: str | None = Field(
        None, description="Pretrained vectors: a word2vec/GloVe text file, a .npy or .safetensors matrix, or `model:<dir or bundled:NAME>`."
    )
    modules: list[str] | None = Field(
        None, description="Dotted names of the embedding parameters to initialise. Default: the model's input embeddings (or its only nn.Embedding)."
    )
    vocab: str | None = Field(
        None, description="The model's vocabulary: a tokenizer folder, `bundled:NAME`, or a text file with one token per line (line = id). Default: the tokenizer of a Hugging Face model's own path."
    )
    tensor: str | None = Field(None, description="Name of the tensor in a .safetensors source. Default: its only tensor (or the first by name).")
    freeze: bool = Field(False, description="Keep the warm-started embeddings fixed during training (requires_grad=False).")
    project: bool = Field(False, description="If the source's dimension differs from the model's, map it with a seeded random projection instead of failing.")


def _fail(detail: str, key: str = "source") -> UserError:
    return UserError(f"{KEY}.{key}: {detail}")


def _candidates(token: str) -> list[tuple[str, str]]:
    """Lookup keys for one vocabulary token, in order of preference, with their kind."""
    keys = [(token, "exact"), (token.lower(), "lowercase")]
    for marker in MARKERS:
        if token.startswith(marker) and len(token) > len(marker):
            bare = token[len(marker):]
            keys += [(bare, "unmarked"), (bare.lower(), "unmarked")]
    return keys


def _load_vocab(spec: str) -> dict[str, int]:
    """token -> id from a tokenizer folder / bundled name, or a one-token-per-line file."""
    from leantrain.models import resolve_model_path

    path = Path(resolve_model_path(spec))
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        return {tok: i for i, tok in reversed(list(enumerate(lines)))}  # first id wins
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(str(path)).get_vocab())


def _read_text_vectors(path: Path, wanted: set[str] | None) -> tuple[dict[str, int], torch.Tensor]:
    """Parse ``word v1 v2 ...`` lines (optional ``count dim`` header), keeping only ``wanted`` words.

    Skipping unwanted words before converting numbers keeps a 400k-word GloVe file cheap.
    Words may contain spaces: the last ``dim`` fields are the vector.
    """
    words: dict[str, int] = {}
    rows: list[list[float]] = []
    dim = None
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\n\r").rstrip().split(" ")
            if not parts or parts == [""]:
                continue
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])  # word2vec header: count dim
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) < dim + 1 or dim < 1:
                raise _fail(f"{path.name} line {number}: expected a word and {dim} numbers")
            word = " ".join(parts[:-dim])
            if word in words or (wanted is not None and word not in wanted):
                continue
            try:
                rows.append([float(v) for v in parts[-dim:]])
            except ValueError:
                raise _fail(f"{path.name} line {number}: not a word followed by {dim} numbers") from None
            words[word] = len(rows) - 1
    if dim is None:
        raise _fail(f"{path.name} holds no vectors")
    return words, torch.tensor(rows, dtype=torch.float32).reshape(len(rows), dim)


def load_source(cfg: WarmStartSettings, wanted: set[str] | None) -> tuple[dict[str, int] | None, torch.Tensor]:
    """The source as (token -> row or None for row-aligned, matrix [rows, dim])."""
    spec = cfg.source
    if spec.startswith("model:"):
        from leantrain.models import resolve_model_path
        from transformers import AutoModel

        path = resolve_model_path(spec.split(":", 1)[1])
        try:
            weight = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach().float()
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot load a model from {path!r}: {str(exc).splitlines()[0]}") from None
        try:
            tokens = _load_vocab(path)
        except (OSError, ValueError):
            tokens = None  # no tokenizer there: take the matrix row-for-row
        return tokens, weight
    path = Path(spec)
    if not path.is_file():
        raise _fail(f"no such file: {spec}")
    try:
        if path.suffix == ".npy":
            import numpy as np

            matrix = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            name = cfg.tensor or min(tensors, default=None)  # first by name: deterministic
            if name not in tensors:
                raise _fail(f"{path.name} has no tensor {name!r}; it has: {', '.join(tensors) or '(none)'}", "tensor")
            matrix = tensors[name].float()
        else:
            return _read_text_vectors(path, wanted)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
    if matrix.ndim != 2:
        raise _fail(f"{path.name} is a {matrix.ndim}-D array; expected a [vocabulary, dim] matrix")
    return None, matrix


def target_parameters(model: torch.nn.Module, names: list[str] | None) -> dict[str, torch.nn.Parameter]:
    """The 2-D parameters to warm-start, by name (default: the input embeddings)."""
    params = dict(model.named_parameters())
    if names:
        found = {}
        for name in names:
            key = name if name in params else f"{name}.weight"
            if key not in params or params[key].ndim != 2:
                raise _fail(f"no 2-D parameter named {name!r}", "modules")
            found[key] = params[key]
        return found
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is None:
        embeddings = [m for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
        if len(embeddings) != 1:
            listed = [n for n, p in params.items() if p.ndim == 2]
            raise _fail(f"name the embedding parameter(s); 2-D parameters: {', '.join(listed) or '(none)'}", "modules")
        embedding = embeddings[0]
    return {n: p for n, p in params.items() if p is embedding.weight}


def _rescale_uncovered(weight: torch.Tensor, covered: torch.Tensor, vectors: torch.Tensor) -> None:
    """Put uncovered rows (the model's init) on the copied vectors' scale, in place.

    Standardising the init and giving it the covered vectors' mean and std keeps the
    model's randomness (no two uncovered tokens collide) while no row is 10x smaller or
    larger than the rest. All-zero rows (padding) stay zero. One scalar mean and std:
    per-dimension figures are too noisy when only a few hundred words are covered.
    """
    rest = ~covered & weight.abs().sum(1).gt(0)
    if covered.sum() < 2 or not rest.any():
        return
    init = weight[rest]
    scale = init.std().clamp_min(1e-12)
    weight[rest] = (init - init.mean()) / scale * vectors.std() + vectors.mean()


@register
class WarmStart(Cut):
    name = "warm_start"
    Config = WarmStartSettings
    summary = "Initialise embeddings from pretrained vectors (GloVe/word2vec, .npy, .safetensors, another model)."
    order = 5  # before LoRA (10): the copied vectors become part of the frozen base

    def setup(self, run) -> None:
        if not self.config.source:
            raise _fail("required: a vectors file (.txt/.vec, .npy, .safetensors) or model:<dir>")
        if not self.config.source.startswith("model:") and not Path(self.config.source).is_file():
            raise _fail(f"no such file: {self.config.source}")

    def _model_vocab(self, model, run=None) -> dict[str, int] | None:
        tokenizer = getattr(run, "tokenizer", None)
        if not self.config.vocab and tokenizer is not None:
            return dict(tokenizer.get_vocab())  # the run's own tokenizer: no second load
        if self.config.vocab:
            try:
                return _load_vocab(self.config.vocab)
            except (OSError, ValueError) as exc:
                raise _fail(f"cannot load a vocabulary from {self.config.vocab!r}: {str(exc).splitlines()[0]}", "vocab") from None
        path = getattr(getattr(model, "config", None), "_name_or_path", None)
        if not path:
            return None
        try:
            return _load_vocab(path)  # the recipe's (resolved) model path: its tokenizer
        except (OSError, ValueError):
            return None

    def prepare_model(self, model: torch.nn.Module, run) -> torch.nn.Module:
        cfg = self.config
        targets = target_parameters(model, cfg.modules)
        vocab = self._model_vocab(model, run)
        if vocab is None and not cfg.source.startswith("model:") and Path(cfg.source).suffix not in (".npy", ".safetensors"):
            raise _fail("matching words needs the model's vocabulary: set it to a tokenizer folder or a vocab.txt", "vocab")
        wanted = {key for tok in vocab for key, _ in _candidates(tok)} if vocab else None
        tokens, source = load_source(cfg, wanted)
        if source.shape[0] == 0:
            raise _fail(f"none of the model's vocabulary entries was found in {cfg.source}")
        if tokens is not None and (vocab is None or tokens == vocab):
            tokens = None  # same vocabulary (or none to match against): copy row-for-row
        dim = next(iter(targets.values())).shape[1]
        if source.shape[1] != dim:
            if not cfg.project:
                raise _fail(
                    f"vectors are {source.shape[1]}-dimensional but the model's embeddings are {dim}-dimensional; "
                    f"set {KEY}.project: true to map them with a random projection"
                )
            seed = getattr(run.train, "seed", 0)
            gen = torch.Generator().manual_seed(seed)
            source = source @ (torch.randn(source.shape[1], dim, generator=gen) / dim**0.5)

        rows, covered_total, matches = 0, 0, {"exact": 0, "lowercase": 0, "unmarked": 0, "row": 0}
        for param in targets.values():
            if param.shape[1] != dim:
                raise _fail("all parameters in modules must have the same width", "modules")
            weight = param.detach().float().clone()
            index = torch.full((weight.shape[0],), -1, dtype=torch.long)
            if tokens is None:
                if source.shape[0] > weight.shape[0]:
                    raise _fail(f"the source has {source.shape[0]} rows but the model's vocabulary has {weight.shape[0]}")
                index[: source.shape[0]] = torch.arange(source.shape[0])
                matches["row"] += source.shape[0]
            else:
                for token, row in vocab.items():
                    if row >= weight.shape[0]:
                        continue
                    hit = next(((key, kind) for key, kind in _candidates(token) if key in tokens), None)
                    if hit:
                        index[row] = tokens[hit[0]]
                        matches[hit[1]] += 1
            covered = index >= 0
            if not covered.any():
                raise _fail(f"none of the model's vocabulary entries was found in {cfg.source}")
            vectors = source[index[covered]]
            _rescale_uncovered(weight, covered, vectors)
            weight[covered] = vectors
            with torch.no_grad():
                param.copy_(weight.to(param.dtype))
            if cfg.freeze:
                param.requires_grad_(False)
            rows += weight.shape[0]
            covered_total += int(covered.sum())

        run.extras.update({
            "warm_start_coverage": covered_total / rows,
            "warm_start_rows": rows,
            "warm_start_covered": covered_total,
            "warm_start_matches": {k: v for k, v in matches.items() if v},
            "warm_start_parameters": list(targets),
        })
        return model
