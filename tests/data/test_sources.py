"""Every kind of source behind ``read_rows``: text folders, saved `datasets`, hub names, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import ids, load, write_rows

from leantrain.data.sources import open_source, read_rows, read_table, write_table
from leantrain.errors import DataError


def make_class_folders(root: Path, per_class: dict[str, list[str]]) -> Path:
    for label, texts in per_class.items():
        (root / label).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / label / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------ text folders


def test_folder_with_class_subfolders_labels_each_file_by_its_folder(tmp_path):
    root = make_class_folders(tmp_path / "reviews", {"pos": ["great film", "loved it"], "neg": ["dull", "too long"]})
    (root / "README.txt").write_text("not an example", encoding="utf-8")  # beside the classes: ignored
    (root / "pos" / ".hidden.txt").write_text("editor backup", encoding="utf-8")  # hidden: ignored
    nested = root / "neg" / "more"
    nested.mkdir()
    (nested / "x.txt").write_bytes("\ufeffbyte-order mark\r\n".encode("utf-8"))  # deeper: still class "neg"

    rows = read_rows(root, columns=["text", "label"])
    assert rows == [
        {"text": "dull", "label": "neg"},
        {"text": "too long", "label": "neg"},
        {"text": "byte-order mark", "label": "neg"},
        {"text": "great film", "label": "pos"},
        {"text": "loved it", "label": "pos"},
    ]
    assert read_rows(root, limit=2) == rows[:2]


def test_flat_folder_gives_texts_without_labels(tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    for name, text in {"b.txt": "second", "a.md": "first\nwith two lines"}.items():
        (root / name).write_text(text, encoding="utf-8")
    assert read_rows(root) == [{"text": "first\nwith two lines"}, {"text": "second"}]
    with pytest.raises(DataError, match=r"notes: missing column 'label'.*one subfolder per class"):
        read_rows(root, columns=["text", "label"])


def test_text_folder_trains_a_classifier(tmp_path, tokenizer):
    root = make_class_folders(
        tmp_path / "topics",
        {"food": [f"bread and soup number {i}" for i in range(6)], "tech": [f"server and kernel bug {i}" for i in range(6)]},
    )
    data = load(tokenizer, train=str(root), eval_fraction=0.25)
    assert data.label_names == ["food", "tech"]
    assert len(data.train) == 9 and len(data.eval) == 3
    labels = {data.label_names[ex["labels"]] for ex in data.train + data.eval}
    assert labels == {"food", "tech"}


# ------------------------------------------------------------------ saved `datasets`


@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory) -> Path:
    """A DatasetDict (train/test) saved with save_to_disk; the label is a ClassLabel."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    train = datasets.Dataset.from_dict({"text": [f"train row {i}" for i in range(8)], "label": [i % 2 for i in range(8)]}, features=features)
    test = datasets.Dataset.from_dict({"text": ["test a", "test b"], "label": [1, 0]}, features=features)
    path = tmp_path_factory.mktemp("hf") / "saved_dict"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def test_saved_dataset_dict_reads_train_by_default_and_split_on_request(saved_dict):
    assert (saved_dict / "dataset_dict.json").is_file()
    train = read_rows(saved_dict, columns=["text", "label"])
    assert len(train) == 8
    assert train[:2] == [{"text": "train row 0", "label": "neg"}, {"text": "train row 1", "label": "pos"}]  # names, not ints
    assert read_rows(f"{saved_dict}::test") == [{"text": "test a", "label": "pos"}, {"text": "test b", "label": "neg"}]
    assert read_rows(saved_dict, limit=3) == train[:3]
    with pytest.raises(DataError, match=r"saved_dict::validation: no split 'validation'; splits: train, test"):
        read_rows(f"{saved_dict}::validation")


def test_saved_single_dataset(tmp_path):
    import datasets

    path = tmp_path / "single"
    datasets.Dataset.from_dict({"text": ["x", "y"], "label": ["a", "b"], "score": [0.5, 1.5]}).save_to_disk(str(path))
    assert (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    assert read_rows(path) == [{"text": "x", "label": "a", "score": 0.5}, {"text": "y", "label": "b", "score": 1.5}]
    with pytest.raises(DataError, match=r"single::test: a single saved Dataset has no splits"):
        read_rows(f"{path}::test")


def test_recipe_paths_with_a_split_resolve_against_the_recipe(saved_dict, tokenizer):
    from leantrain.data.text import load_text_data
    from leantrain.recipe import DataSection

    resolved = []

    def resolve(path):  # what Recipe.resolve_path does: relative -> beside the recipe
        resolved.append(path)
        return saved_dict.parent / path

    cfg = DataSection(train="saved_dict", eval="saved_dict::test")
    data = load_text_data(cfg, "sequence-classification", tokenizer, 0, resolve)
    assert resolved == ["saved_dict", "saved_dict"]  # the split never reaches the resolver
    assert (len(data.train), len(data.eval)) == (8, 2)
    assert data.label_names == ["neg", "pos"]
    assert [data.label_names[ex["labels"]] for ex in data.eval] == ["pos", "neg"]


def test_corrupt_saved_dataset_is_a_one_line_data_error(tmp_path):
    import datasets

    path = tmp_path / "broken"
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(path))
    (path / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_rows(path)
    assert "broken" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ hub names


def test_hub_name_not_available_offline_is_one_line_naming_it():
    with pytest.raises(DataError) as err:
        read_rows("leantrain-test/no-such-dataset")
    message = str(err.value)
    assert message.startswith("leantrain-test/no-such-dataset: ") and "offline" in message and "\n" not in message


def test_hub_name_loads_through_datasets_forced_offline(monkeypatch):
    import datasets
    import huggingface_hub.constants

    seen = {}

    def fake_load_dataset(name, split=None):
        seen.update(name=name, split=split, offline=(datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        ds = datasets.Dataset.from_dict({"text": ["hub a", "hub b", "hub c"], "label": ["x", "y", "x"]})
        return ds if split else datasets.DatasetDict({"train": ds, "test": ds.select([0])})

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert [r["text"] for r in read_rows("someone/cached-set")] == ["hub a", "hub b", "hub c"]
    assert seen == {"name": "someone/cached-set", "split": None, "offline": (True, True)}
    assert datasets.config.HF_HUB_OFFLINE is False  # restored after the call
    assert len(read_rows("someone/cached-set::test")) == 3 and seen["split"] == "test"


# ------------------------------------------------------------------ errors and writing


def _error_case(root: Path, case: str) -> tuple[str, str, str]:
    """Build a broken source; returns (path to read, name the message must contain, problem)."""
    if case == "missing file":
        return str(root / "absent.csv"), "absent.csv", "not found"
    if case == "missing folder":
        return str(root / "absent_folder"), "absent_folder", "not found"
    if case == "empty folder":
        (root / "empty_dir").mkdir()
        return str(root / "empty_dir"), "empty_dir", "no text files"
    if case == "binary file":
        (root / "bin" / "a").mkdir(parents=True)
        (root / "bin" / "a" / "x.bin").write_bytes(b"\xff\xfe\x00bad")
        return str(root / "bin"), "x.bin", "not UTF-8"
    (root / "t.csv").write_text("text\nhello\n", encoding="utf-8")  # split on a csv
    return f"{root / 't.csv'}::test", "t.csv::test", "split' only applies"


@pytest.mark.parametrize("case", ["missing file", "missing folder", "empty folder", "binary file", "split on a csv"])
def test_source_errors_are_one_line_naming_the_path(tmp_path, case):
    path, name, problem = _error_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        read_rows(path)
    message = str(err.value)
    assert "\n" not in message and name in message and problem in message, message


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_write_table_round_trips_each_format(tmp_path, suffix):
    rows = [{"text": 'a "quoted", text', "label": "01"}, {"text": "café naïve", "label": "10"}]
    src = write_rows(tmp_path / f"in{suffix}", rows)
    out = write_table(read_table(src), tmp_path / f"out{suffix}")
    assert read_rows(out) == rows
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place
    with pytest.raises(DataError, match="unsupported output format '.xlsx'"):
        write_table(read_table(src), tmp_path / "out.xlsx")


def test_table_sources_keep_working_and_fingerprint_by_content(tmp_path, tokenizer):
    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(6)]
    a = write_rows(tmp_path / "a.jsonl", rows)
    b = tmp_path / "elsewhere" / "b.jsonl"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert open_source(a).fingerprint() == open_source(b).fingerprint()  # same bytes, other path
    b.write_text(b.read_text().replace("row 5", "row 6"))
    assert open_source(a).fingerprint() != open_source(b).fingerprint()
    data = load(tokenizer, train=str(a), eval=str(a))
    assert ids(data.train) == [tuple(tokenizer(r["text"])["input_ids"]) for r in rows]
    assert json.loads(json.dumps(data.stats))["rows_train"] == 6
