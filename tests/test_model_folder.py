"""A run's model folder is a standard artefact: plain transformers (and its pipeline) load it
with the label names, it names its base portably, and its README is a real model card."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from leantrain import train
from test_predict import INPUTS, cls_recipe, in_memory_probs, save_tiny_classifier, topics_csv

LABELS = ["food", "sports", "tech"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("folder")
    base = save_tiny_classifier(root / "base", tiny_bert_dir, num_labels=2)  # pretrained weights, 2-label head
    recipe = cls_recipe(base, topics_csv(root / "topics.csv", 60), root / "run",
                        cuts={"lora": {"r": 4, "merge_on_save": True}}, epochs=1)
    result = train(recipe, show_progress=False)
    # Moved to another place, away from the data and the recipe: the folder stands alone.
    moved = root / "elsewhere"
    shutil.copytree(result.run_dir / "model", moved)
    return result, moved, base


def _plain_probs(model, folder) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(INPUTS, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits.softmax(-1)


def test_plain_transformers_loads_the_adapter_folder_with_its_labels(lora_run):
    from transformers import AutoModelForSequenceClassification

    result, folder, _ = lora_run
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # no num_labels, no leantrain code
    assert [model.config.id2label[i] for i in range(3)] == LABELS
    assert any("lora_" in name for name, _ in model.named_parameters())  # the adapter came with it
    torch.testing.assert_close(_plain_probs(model, folder), in_memory_probs(result.model, result.run_dir, INPUTS),
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize("sub", ["", "merged"])
def test_text_classification_pipeline_names_the_labels(lora_run, sub):
    from transformers import pipeline

    result, folder, _ = lora_run
    classify = pipeline("text-classification", model=str(folder / sub) if sub else str(folder), top_k=None)
    scores = classify(INPUTS[:3])
    expected = in_memory_probs(result.model, result.run_dir, INPUTS[:3])
    for row, probs in zip(scores, expected):
        got = {item["label"]: item["score"] for item in row}
        assert set(got) == set(LABELS)
        assert [got[n] for n in LABELS] == pytest.approx(probs.tolist(), abs=1e-5)


def test_adapter_names_its_base_as_given_and_the_bundled_one_by_hub_id(lora_run):
    from leantrain.models.loading import portable_model_name, resolve_model_path

    _, folder, base = lora_run
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base)  # a local base stays as the user gave it
    assert json.loads((folder / "leantrain.json").read_text())["base_model_name_or_path"] == str(base)
    hub_id = portable_model_name("bundled:minilm")
    assert hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model_path(hub_id) == resolve_model_path("bundled:minilm")  # offline: the bundled copy
    assert portable_model_name("someone/their-model") == "someone/their-model"


def test_model_card_tells_data_cuts_metrics_cost_and_version(lora_run):
    result, folder, _ = lora_run
    card = (folder / "README.md").read_text()
    summary = result.summary
    assert "[More Information Needed]" not in card
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert "pipeline_tag: text-classification" in card
    assert f"{summary['data']['rows_train']} train, {summary['data']['rows_eval']} eval" in card
    assert "3 classes: food, sports, tech" in card and "`topics.csv`" in card
    assert "`lora`: r=4" in card
    assert f"| accuracy | {summary['eval']['accuracy']:.4g} |" in card
    assert f"${summary['cost_usd']:.6f}" in card and f"{summary['train_seconds']:.1f} s" in card
    assert f"leantrain {summary['versions']['leantrain']}" in card
    merged_card = (folder / "merged" / "README.md").read_text()
    assert "library_name: transformers" in merged_card and "3 classes" in merged_card


def test_bundled_base_is_recorded_by_hub_id(tmp_path, bundled_model_dir):
    recipe = cls_recipe("bundled:minilm", topics_csv(tmp_path / "topics.csv", 30), tmp_path / "run",
                        cuts={"lora": {"r": 2}}, epochs=1, max_steps=1)
    recipe["data"]["max_length"] = 16
    folder = train(recipe, show_progress=False).run_dir / "model"
    for name in ("adapter_config.json", "leantrain.json"):
        text = (folder / name).read_text()
        assert str(bundled_model_dir) not in text and ".venv" not in text, name
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "sentence-transformers/all-MiniLM-L6-v2"
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in (folder / "README.md").read_text()


def test_base_weights_of_a_peft_state_are_the_unloaded_base(tiny_bert_dir):
    """The FSDP path (weights gathered as one PEFT state dict) saves the same base as unload()."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from leantrain.engine.outputs import base_weights

    base = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert_dir, num_labels=3))
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"]))
    expected = copy.deepcopy(peft_model).unload().state_dict()
    got = base_weights(peft_model.state_dict())
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
