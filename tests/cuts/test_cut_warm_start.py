"""Warm start: coverage figures, every source format, freezing, errors, and fewer steps to a target loss."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cuts_helpers import initial_prepared, make_cut, run_context
from leantrain import UserError, train
from leantrain.models import load_model
from leantrain.recipe import ModelSection

LABELS = ["food", "sports", "tech"]
WORD_EMB = "bert.embeddings.word_embeddings.weight"


def read_vectors(path: Path) -> dict[str, torch.Tensor]:
    """word -> vector of a text vectors file (the last fields are the vector; no header)."""
    lines = [line.split(" ") for line in path.read_text(encoding="utf-8").splitlines()]
    dim = len(lines[-1]) - 1
    return {" ".join(r[:-dim]): torch.tensor([float(x) for x in r[-dim:]]) for r in lines if len(r) > dim}


def tiny_bert(tiny_bert_dir) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_model(ModelSection(name_or_path=str(tiny_bert_dir), from_scratch=True), LABELS)


def warm(model, run=None, **settings):
    run = run or run_context()
    cut = make_cut("warm_start", **settings)
    cut.setup(run)
    return cut.prepare_model(model, run), run.extras


def token_id(tiny_bert_dir, token: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir)).convert_tokens_to_ids(token)


class BagClassifier(torch.nn.Module):
    """A plain module: mean of word vectors, then a linear head."""

    def __init__(self, vocab_size: int, dim: int = 4, classes: int = 3):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.embed(ids))


# -- coverage and alignment on a handmade GloVe file ---------------------------------------

VOCAB = ["[PAD]", "goal", "Match", "##ball", "\u2581Soup", "unseen", "bread", "Cheese", "zzz"]
GLOVE = """6 4
goal 1 0 0 0
match 0 1 0 0
ball 0 0 1 0
soup 0 0 0 1
bread 1 1 0 0
new york 2 2 2 2
cheese 0 0 1 1
"""
EXPECTED = {"goal": "goal", "Match": "match", "##ball": "ball", "\u2581Soup": "soup", "bread": "bread", "Cheese": "cheese"}


@pytest.fixture
def handmade(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "glove.txt").write_text(GLOVE, encoding="utf-8")
    return tmp_path


def test_coverage_counts_and_rows_on_handmade_glove(handmade):
    torch.manual_seed(0)
    model, extras = warm(BagClassifier(len(VOCAB)), source=str(handmade / "glove.txt"), vocab=str(handmade / "vocab.txt"))
    weight = model.embed.weight.detach()
    vectors = read_vectors(handmade / "glove.txt")

    assert extras["warm_start_coverage"] == pytest.approx(6 / 9)
    assert (extras["warm_start_rows"], extras["warm_start_covered"]) == (9, 6)
    assert extras["warm_start_matches"] == {"exact": 2, "lowercase": 2, "unmarked": 2}
    assert extras["warm_start_parameters"] == ["embed.weight"]
    for token, word in EXPECTED.items():
        assert torch.equal(weight[VOCAB.index(token)], vectors[word]), token
    # The padding row stays zero; the uncovered rows keep distinct random values, on the
    # covered vectors' scale (their mean and std, as one scalar each).
    assert torch.equal(weight[0], torch.zeros(4))
    covered = torch.stack([vectors[w] for w in EXPECTED.values()])
    rest = weight[[VOCAB.index("unseen"), VOCAB.index("zzz")]]
    assert not torch.equal(rest[0], rest[1])
    assert rest.mean().item() == pytest.approx(covered.mean().item(), abs=1e-5)
    assert rest.std().item() == pytest.approx(covered.std().item(), abs=1e-5)


def test_hf_model_vocabulary_comes_from_its_own_folder(tiny_bert_dir, topic_vectors):
    model, extras = warm(tiny_bert(tiny_bert_dir), source=str(topic_vectors))
    vectors = read_vectors(topic_vectors)
    weight = model.get_input_embeddings().weight.detach()
    for word in ("goal", "bread", "kernel", "the"):
        assert torch.allclose(weight[token_id(tiny_bert_dir, word)], vectors[word]), word
    assert extras["warm_start_parameters"] == [WORD_EMB]
    assert extras["warm_start_matches"]["exact"] == len(vectors)  # every word is a MiniLM token
    assert extras["warm_start_covered"] >= len(vectors)
    assert extras["warm_start_coverage"] == extras["warm_start_covered"] / 30522


# -- source formats ----------------------------------------------------------------------

def test_npy_rows_align_to_token_ids(tiny_bert_dir, tmp_path):
    matrix = np.random.default_rng(0).normal(size=(100, 32)).astype(np.float32)
    np.save(tmp_path / "emb.npy", matrix)
    model, extras = warm(tiny_bert(tiny_bert_dir), source=str(tmp_path / "emb.npy"))
    weight = model.get_input_embeddings().weight.detach()
    assert torch.equal(weight[:100], torch.from_numpy(matrix))
    assert extras["warm_start_matches"] == {"row": 100}
    assert extras["warm_start_coverage"] == pytest.approx(100 / 30522)


def test_safetensors_named_and_default_tensor(tiny_bert_dir, tmp_path):
    from safetensors.torch import save_file

    tensors = {"a_first": torch.randn(10, 32), "emb": torch.randn(20, 32)}
    save_file(tensors, str(tmp_path / "emb.safetensors"))
    model, extras = warm(tiny_bert(tiny_bert_dir), source=str(tmp_path / "emb.safetensors"), tensor="emb")
    assert torch.equal(model.get_input_embeddings().weight[:20].detach(), tensors["emb"])
    assert extras["warm_start_covered"] == 20
    model, extras = warm(tiny_bert(tiny_bert_dir), source=str(tmp_path / "emb.safetensors"))
    assert torch.equal(model.get_input_embeddings().weight[:10].detach(), tensors["a_first"])


def test_model_source_same_vocabulary_copies_row_for_row(tiny_bert_dir, tmp_path):
    from transformers import AutoConfig, AutoModel

    source = AutoModel.from_config(AutoConfig.from_pretrained(tiny_bert_dir))
    source.save_pretrained(tmp_path / "src")
    (tmp_path / "src" / "vocab.txt").write_bytes((tiny_bert_dir / "vocab.txt").read_bytes())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).exists():
            (tmp_path / "src" / name).write_bytes((tiny_bert_dir / name).read_bytes())
    model, extras = warm(tiny_bert(tiny_bert_dir), source=f"model:{tmp_path / 'src'}")
    assert torch.equal(model.get_input_embeddings().weight.detach(), source.get_input_embeddings().weight.detach())
    assert extras["warm_start_coverage"] == 1.0 and extras["warm_start_matches"] == {"row": 30522}


def test_model_source_other_vocabulary_matches_by_token(tiny_bert_dir, tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "goal", "match", "Bread"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    src = tmp_path / "src"
    BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False).save_pretrained(src)
    torch.manual_seed(1)
    source = BertModel(BertConfig(vocab_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    source.save_pretrained(src)

    model, extras = warm(tiny_bert(tiny_bert_dir), source=f"model:{src}")
    got, want = model.get_input_embeddings().weight.detach(), source.get_input_embeddings().weight.detach()
    for word, row in (("goal", 5), ("match", 6), ("[CLS]", 2)):
        assert torch.equal(got[token_id(tiny_bert_dir, word)], want[row]), word
    assert extras["warm_start_matches"]["exact"] == 7  # all but "Bread", which MiniLM has lowercase only
    assert extras["warm_start_covered"] >= 7 and "row" not in extras["warm_start_matches"]


def test_bundled_minilm_source_needs_project_for_other_width(tiny_bert_dir):
    with pytest.raises(UserError) as err:
        warm(tiny_bert(tiny_bert_dir), source="model:bundled:minilm")
    message = str(err.value)
    assert message.startswith("cuts.warm_start.source:") and "384" in message and "32" in message
    assert "\n" not in message and "project" in message

    model, extras = warm(tiny_bert(tiny_bert_dir), source="model:bundled:minilm", project=True)
    assert extras["warm_start_coverage"] == 1.0  # same tokenizer: every row, row-for-row
    again, _ = warm(tiny_bert(tiny_bert_dir), source="model:bundled:minilm", project=True)
    assert torch.equal(model.get_input_embeddings().weight, again.get_input_embeddings().weight)  # seeded


# -- plain modules -----------------------------------------------------------------------

def test_plain_module_named_parameter_and_errors(handmade):
    class TwoTables(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.words = torch.nn.Embedding(len(VOCAB), 4)
            self.tags = torch.nn.Embedding(5, 4)

    glove, vocab = str(handmade / "glove.txt"), str(handmade / "vocab.txt")
    with pytest.raises(UserError, match=r"^cuts\.warm_start\.modules: name the embedding .*words\.weight, tags\.weight"):
        warm(TwoTables(), source=glove, vocab=vocab)
    model, extras = warm(TwoTables(), source=glove, vocab=vocab, modules=["words"])
    assert extras["warm_start_parameters"] == ["words.weight"] and extras["warm_start_covered"] == 6
    with pytest.raises(UserError, match=r"^cuts\.warm_start\.vocab: matching words needs"):
        warm(BagClassifier(len(VOCAB)), source=glove)
    with pytest.raises(UserError, match=r"^cuts\.warm_start\.modules: no 2-D parameter named 'nope'"):
        warm(TwoTables(), source=glove, vocab=vocab, modules=["nope"])


# -- errors ------------------------------------------------------------------------------

def bad_sources(tmp_path: Path) -> list[tuple[dict, str]]:
    (tmp_path / "ragged.txt").write_text("goal 1 2 3\nmatch 1\n", encoding="utf-8")
    (tmp_path / "words.txt").write_text("goal 1 2 3\nmatch 1 x 3\n", encoding="utf-8")
    (tmp_path / "strangers.txt").write_text("qqxqq 1 2\nzzxzz 3 4\n", encoding="utf-8")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), dtype=np.float32))
    np.save(tmp_path / "big.npy", np.zeros((30600, 32), dtype=np.float32))
    from safetensors.torch import save_file

    save_file({"emb": torch.zeros(3, 32)}, str(tmp_path / "emb.safetensors"))
    return [
        ({}, r"source: required"),
        ({"source": str(tmp_path / "missing.txt")}, r"source: no such file"),
        ({"source": str(tmp_path / "ragged.txt")}, r"source: ragged\.txt line 2: expected a word and 3 numbers"),
        ({"source": str(tmp_path / "words.txt")}, r"source: words\.txt line 2: not a word followed by 3 numbers"),
        ({"source": str(tmp_path / "strangers.txt")}, r"source: none of the model's vocabulary entries was found in .*strangers\.txt$"),
        ({"source": str(tmp_path / "cube.npy")}, r"source: cube\.npy is a 3-D array"),
        ({"source": str(tmp_path / "big.npy")}, r"source: the source has 30600 rows"),
        ({"source": str(tmp_path / "emb.safetensors"), "tensor": "nope"}, r"tensor: emb\.safetensors has no tensor 'nope'; it has: emb"),
        ({"source": f"model:{tmp_path / 'no-model'}"}, r"source: cannot load a model from"),
    ]


def test_bad_sources_are_one_line_errors_naming_the_key(tiny_bert_dir, tmp_path):
    for settings, pattern in bad_sources(tmp_path):
        with pytest.raises(UserError) as err:
            warm(tiny_bert(tiny_bert_dir), **settings)
        message = str(err.value)
        assert "\n" not in message, message
        assert message.startswith("cuts.warm_start."), message
        assert re.search(pattern, message), (pattern, message)


def test_bad_source_through_train_fails_before_training(tiny_recipe, tmp_path):
    recipe = copy.deepcopy(tiny_recipe)
    recipe["cuts"] = {"warm_start": str(tmp_path / "nope.vec")}  # shorthand: the source
    with pytest.raises(UserError, match=r"^cuts\.warm_start\.source: no such file: .*nope\.vec$"):
        train(recipe, show_progress=False)


# -- freezing ----------------------------------------------------------------------------

@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_embedding_is_bitwise_unchanged_unfrozen_one_trains(freeze, tiny_recipe, topic_vectors, tiny_bert_dir):
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"]["epochs"] = 1
    recipe["output"]["save_model"] = False
    recipe["cuts"] = {"warm_start": {"source": str(topic_vectors), "freeze": freeze}}
    initial, _ = initial_prepared(recipe)
    start = dict(initial.named_parameters())
    goal = token_id(tiny_bert_dir, "goal")
    assert torch.allclose(start[WORD_EMB][goal], read_vectors(topic_vectors)["goal"])  # warm-started

    result = train(recipe, show_progress=False)
    after = dict(result.model.named_parameters())
    assert after[WORD_EMB].requires_grad is not freeze
    assert torch.equal(after[WORD_EMB].detach(), start[WORD_EMB].detach()) is freeze
    assert not torch.equal(after["classifier.weight"].detach(), start["classifier.weight"].detach())
    extras = result.summary["extras"]
    assert extras["warm_start_covered"] >= 35 and extras["warm_start_parameters"] == [WORD_EMB]


def test_runs_before_lora_so_the_vectors_are_the_frozen_base(tiny_bert_dir, topic_vectors):
    from leantrain.cuts import build_cuts
    from leantrain.recipe import Recipe

    cuts = build_cuts(Recipe.model_validate(
        {"cuts": {"lora": True, "warm_start": str(topic_vectors), "fast_dropout": False}}))
    assert [c.name for c in cuts] == ["warm_start", "lora"]
    run = run_context()
    cuts.setup(run)
    model = cuts.prepare_model(tiny_bert(tiny_bert_dir), run)
    base = dict(model.named_parameters())["base_model.model." + WORD_EMB]
    assert not base.requires_grad
    assert torch.allclose(base[token_id(tiny_bert_dir, "goal")], read_vectors(topic_vectors)["goal"])


# -- acceptance: fewer steps to a target eval loss ---------------------------------------

TARGET_LOSS = 0.9  # ln 3 = 1.099 is chance level on the three topics


def steps_to_target(recipe: dict) -> int | None:
    train(copy.deepcopy(recipe), show_progress=False)
    events = [json.loads(line) for line in (Path(recipe["output"]["dir"]) / "metrics.jsonl").read_text().splitlines()]
    return next((e["step"] for e in events if e["event"] == "eval" and e["loss"] < TARGET_LOSS), None)


def test_warm_start_reaches_target_loss_in_fewer_steps(tiny_recipe, topic_vectors, tmp_path, capsys):
    """Tiny BERT from scratch, with and without topic-informative word vectors.

    The settings are identical (seed, data, schedule, evaluation every 2 steps, which
    also draws the same random numbers in both runs); only the embedding init differs.
    """
    recipe = copy.deepcopy(tiny_recipe)
    recipe["train"].update({"epochs": 8, "lr": 5e-3, "warmup_ratio": 0.1, "eval_every": 2, "log_every": 2})
    recipe["output"]["save_model"] = False
    cold = copy.deepcopy(recipe)
    cold["output"]["dir"] = str(tmp_path / "cold")
    warmed = copy.deepcopy(recipe)
    warmed["output"]["dir"] = str(tmp_path / "warm")
    warmed["cuts"] = {"warm_start": {"source": str(topic_vectors)}}

    cold_steps, warm_steps = steps_to_target(cold), steps_to_target(warmed)
    with capsys.disabled():
        print(f"\nwarm_start: steps to eval loss < {TARGET_LOSS}: warm {warm_steps}, cold {cold_steps} (of 96)")
    assert warm_steps is not None
    assert cold_steps is None or warm_steps < cold_steps, (warm_steps, cold_steps)
