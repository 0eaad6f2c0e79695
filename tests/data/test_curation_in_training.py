"""`data.curate` in a recipe: what training sees, what leaks, and the stats that say so."""
from __future__ import annotations

import random

import pytest
from data_helpers import ids, load, write_rows

from leantrain.data.curate import CurateSettings, normalize
from leantrain.errors import DataError, RecipeError
from leantrain.recipe import DataSection, apply_overrides, parse_recipe

WORDS = ["apple", "river", "stone", "cloud", "music", "paper", "green", "quiet", "north", "light", "storm", "glass"]


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 99)) for _ in range(n))


# ------------------------------------------------------------------ the recipe key


def test_curate_is_off_by_default_and_has_a_shorthand():
    assert DataSection().curate.enabled is False
    assert parse_recipe({"data": {"curate": True}}).data.curate == CurateSettings()
    assert parse_recipe({"data": {"curate": False}}).data.curate.enabled is False
    custom = parse_recipe({"data": {"curate": {"near_dedup": 0.9, "exact_dedup": False}}}).data.curate
    assert (custom.enabled, custom.near_dedup, custom.exact_dedup) == (True, 0.9, False)
    overridden = parse_recipe(apply_overrides({"data": {"curate": True}}, ["data.curate.near_dedup=0.7"])).data.curate
    assert (overridden.enabled, overridden.near_dedup) == (True, 0.7)
    with pytest.raises(RecipeError, match=r"data\.curate\.fuzzy"):
        parse_recipe({"data": {"curate": {"fuzzy": 1}}})


# ------------------------------------------------------------------ curation in load_text_data


@pytest.fixture
def leaky(tmp_path):
    """A train file with exact, near and junk rows, and an eval file two train rows copy."""
    rng = random.Random(7)
    base = [{"text": sentence(rng), "label": "ab"[i % 2]} for i in range(40)]
    eval_rows = [{"text": sentence(rng), "label": "ab"[i % 2]} for i in range(6)]
    words = base[3]["text"].split()
    near_text = " ".join(words[:-1] + ["changed"])  # 9 of 11 shingles shared: Jaccard 0.82
    planted = [
        {"text": base[0]["text"].upper(), "label": "a"},  # exact (case)
        {"text": "  " + base[1]["text"].replace(" ", "\u00a0 "), "label": "b"},  # exact (white space, NBSP)
        {"text": near_text, "label": "b"},  # near: the last of 12 words changed
        {"text": "   ", "label": "a"},  # empty
        {"text": "12 34 56 78 90 | -- ++", "label": "b"},  # no letters
        {"text": eval_rows[0]["text"], "label": "a"},  # leaks an eval row
        {"text": eval_rows[1]["text"].title(), "label": "b"},  # leaks an eval row (case variant)
    ]
    train_path = write_rows(tmp_path / "train.csv", base + planted)
    eval_path = write_rows(tmp_path / "eval.csv", eval_rows)
    return {"train": str(train_path), "eval": str(eval_path), "base": base, "planted": planted, "eval_rows": eval_rows}


def test_curation_drops_duplicates_junk_and_eval_leaks_from_training(leaky, tokenizer):
    data = load(tokenizer, train=leaky["train"], eval=leaky["eval"], curate={"near_dedup": 0.6})
    assert ids(data.train) == [tuple(tokenizer(r["text"])["input_ids"]) for r in leaky["base"]]
    assert len(data.eval) == len(leaky["eval_rows"])  # eval is measured as given
    s = data.stats
    assert s["rows_in"] == 47 + 6 and s["rows_out"] == 40 + 6
    assert (s["rows_train"], s["rows_eval"]) == (40, 6)
    assert s["duplicates_removed"] == 2 + 1 + 2  # exact + near + eval overlap
    c = s["curation"]
    assert (c["exact_duplicates"], c["near_duplicates"], c["eval_overlap"], c["filtered"]) == (2, 1, 2, 2)
    assert c["removed_by_reason"] == {"exact_duplicate": 2, "near_duplicate": 1, "empty": 1, "non_text": 1, "eval_overlap": 2}
    assert c["input_rows"] == 47 and c["kept_rows"] == 40
    assert "examples" not in c


def test_without_curation_every_row_is_trained_on(leaky, tokenizer):
    data = load(tokenizer, train=leaky["train"], eval=leaky["eval"])
    assert len(data.train) == 47
    assert data.stats["duplicates_removed"] == 0 and data.stats["curation"] is None
    assert data.stats["rows_in"] == data.stats["rows_out"] == 53


def test_held_out_split_never_shares_a_text_with_training_when_curated(tmp_path, tokenizer):
    rng = random.Random(3)
    rows = [{"text": sentence(rng), "label": "ab"[i % 2]} for i in range(60)]
    rows += [{"text": r["text"].lower(), "label": r["label"]} for r in rows]  # every text twice
    path = str(write_rows(tmp_path / "dups.jsonl", rows))
    decoded = lambda exs: {normalize(tokenizer.decode(ex["input_ids"], skip_special_tokens=True)) for ex in exs}  # noqa: E731

    plain = load(tokenizer, train=path, eval_fraction=0.25)
    assert decoded(plain.train) & decoded(plain.eval)  # the leak the curation must remove
    curated = load(tokenizer, train=path, eval_fraction=0.25, curate=True)
    assert not decoded(curated.train) & decoded(curated.eval)
    assert ids(curated.eval) == ids(plain.eval)  # same held-out rows with curation on or off
    assert len(decoded(curated.train)) == len(curated.train)  # no duplicates left in training
    assert curated.stats["duplicates_removed"] == len(plain.train) - len(curated.train) > 0


def test_curation_that_leaves_nothing_is_a_data_error(tmp_path, tokenizer):
    path = write_rows(tmp_path / "junk.csv", [{"text": "1 2 3", "label": "a"}, {"text": "4 5 6", "label": "b"}])
    with pytest.raises(DataError, match=r"junk.csv: curation removed every training row"):
        load(tokenizer, train=str(path), eval=str(path), curate=True)
