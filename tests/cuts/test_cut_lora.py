"""LoRA: few trainable parameters, an untouched base, and adapters that load with plain PEFT."""
from __future__ import annotations

import copy

import pytest
import torch

from cuts_helpers import base_param_name, make_cut, run_context, shared_conftest, snapshot
from leantrain import UserError, train
from leantrain.models import load_model
from leantrain.recipe import ModelSection

# The module-scoped run below triggers transformers deprecation notices via PEFT.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LABELS = ["food", "sports", "tech"]
TEXTS = ["the team scored a goal in the match", "we baked bread and cheese soup", "a compiler bug on the server"]


def lora_leaf_names(model: torch.nn.Module) -> set[str]:
    """Names (last component) of the modules PEFT put an adapter on."""
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}


@pytest.mark.slow
def test_trainable_params_under_one_percent_on_minilm():
    model = load_model(ModelSection(name_or_path="bundled:minilm"), LABELS)
    total_before = sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())

    model = make_cut("lora").prepare_model(model, run_context())
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in model.parameters())
    share = sum(trainable.values()) / total

    assert 0 < share < 0.01, f"{share:.4%} of {total} parameters train"
    # Only adapters and the (fully trained) classification head.
    assert all("lora_" in n or "classifier.modules_to_save" in n for n in trainable), sorted(trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    # The adapters are added, the base keeps all its weights.
    assert total > total_before


def test_default_target_modules_bert_and_llama(tiny_bert_dir, tiny_llama_dir):
    bert = load_model(ModelSection(name_or_path=str(tiny_bert_dir), from_scratch=True), LABELS)
    bert = make_cut("lora").prepare_model(bert, run_context())
    assert lora_leaf_names(bert) == {"query", "value"}

    llama = load_model(ModelSection(name_or_path=str(tiny_llama_dir), from_scratch=True, task="causal-lm"))
    llama = make_cut("lora").prepare_model(llama, run_context())
    assert lora_leaf_names(llama) == {"q_proj", "v_proj"}
    # A causal LM has no head to train in full: only adapters train.
    assert all("lora_" in n for n, p in llama.named_parameters() if p.requires_grad)


def test_explicit_target_modules_are_used(tiny_bert_dir):
    bert = load_model(ModelSection(name_or_path=str(tiny_bert_dir), from_scratch=True), LABELS)
    bert = make_cut("lora", target_modules=["key", "dense"], r=4).prepare_model(bert, run_context())
    assert lora_leaf_names(bert) == {"key", "dense"}
    assert {p.shape[0] for n, p in bert.named_parameters() if "lora_A" in n} == {4}


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_in = torch.nn.Linear(4, 8)
        self.fc_out = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.fc_out(torch.relu(self.fc_in(x)))


def _plain_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    return [(x[i], y[i]) for i in range(16)]


def _plain_loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def test_plain_module_without_target_modules_is_a_one_line_user_error(tmp_path):
    recipe = {"cuts": {"lora": True}, "train": {"epochs": 1, "batch_size": 4}, "output": {"dir": str(tmp_path / "run")}}
    with pytest.raises(UserError) as info:
        train(recipe, model=TwoLayer(), loss_fn=_plain_loss, train_data=_plain_data(), show_progress=False)
    message = str(info.value)
    assert "cuts.lora.target_modules" in message
    assert "\n" not in message
    assert "fc_in" in message and "fc_out" in message  # tells the user what to put there


def test_plain_module_with_target_modules_trains_only_adapters(tmp_path):
    torch.manual_seed(0)
    model = TwoLayer()
    before = snapshot(model)
    recipe = {
        "cuts": {"lora": {"target_modules": ["fc_in", "fc_out"], "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2},
        "output": {"dir": str(tmp_path / "run"), "save_model": False},
    }
    result = train(recipe, model=model, loss_fn=_plain_loss, train_data=_plain_data(), show_progress=False)
    trained = dict(result.model.named_parameters())
    trainable = [n for n, p in trained.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(not torch.equal(trained[n], torch.zeros_like(trained[n])) for n in trainable if "lora_B" in n)
    for name, param in trained.items():
        if (base := base_param_name(name)) is not None:
            assert torch.equal(param, before[base]), name


# -- one real LoRA run on the tiny pretrained base, shared by the save/load tests below --


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_base_dir):
    from transformers import AutoModelForSequenceClassification

    shared = shared_conftest()
    root = tmp_path_factory.mktemp("lora-run")
    csv = shared.write_csv(root / "topics.csv", shared.make_topic_rows(120))
    recipe = {
        "model": {"name_or_path": str(tiny_base_dir)},
        "data": {"train": str(csv), "eval_fraction": 0.25, "max_length": 32},
        "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "seed": 0},
        "cuts": {"lora": {"merge_on_save": True}},
        "output": {"dir": str(root / "run")},
    }
    base = AutoModelForSequenceClassification.from_pretrained(tiny_base_dir, num_labels=3)
    base_before = snapshot(base)
    result = train(copy.deepcopy(recipe), show_progress=False)
    result.model.eval()
    return result, base_before


def _batch(tiny_base_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    return tokenizer(TEXTS, padding=True, return_tensors="pt")


def test_base_weights_bitwise_unchanged_after_training(lora_run):
    result, base_before = lora_run
    compared, changed = 0, []
    for name, param in result.model.named_parameters():
        base = base_param_name(name)
        if base is None:
            if param.requires_grad:
                changed.append(name)
            continue
        if base.startswith("classifier."):
            continue  # the frozen original head copy is randomly initialised per load
        assert not param.requires_grad, name
        assert torch.equal(param.detach(), base_before[base]), f"{name} changed"
        compared += 1
    # Every base weight except the head was compared (the mapping missed none).
    assert compared == len([n for n in base_before if not n.startswith("classifier.")])
    # ...and training did something: the zero-initialised B matrices moved.
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_saved_adapter_loads_with_plain_peft_and_gives_same_logits(lora_run, tiny_base_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    result, _ = lora_run
    model_dir = result.run_dir / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    # The adapter file holds only what trained (the base beside it is for plain transformers).
    assert all("lora_" in k or "classifier" in k for k in load_file(str(model_dir / "adapter_model.safetensors")))

    base = AutoModelForSequenceClassification.from_pretrained(tiny_base_dir, num_labels=3)
    loaded = PeftModel.from_pretrained(base, model_dir).eval()
    batch = _batch(tiny_base_dir)
    with torch.no_grad():
        expected = result.model(**batch).logits
        got = loaded(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # The logits are the trained model's, not the base's with a fresh head.
    with torch.no_grad():
        fresh = AutoModelForSequenceClassification.from_pretrained(tiny_base_dir, num_labels=3).eval()(**batch).logits
    assert (fresh - expected).abs().max() > 1e-3


def test_merge_on_save_writes_a_plain_transformers_model(lora_run, tiny_base_dir):
    from transformers import AutoModelForSequenceClassification

    result, _ = lora_run
    merged_dir = result.run_dir / "model" / "merged"
    assert result.summary["saved"]["merged_model"] == str(merged_dir)
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.config.num_labels == 3
    batch = _batch(tiny_base_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, result.model(**batch).logits, atol=1e-5, rtol=0)


def test_no_merged_model_unless_asked(tmp_path, cut_recipe):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"lora": True}
    recipe["train"]["max_steps"] = 1
    result = train(recipe, show_progress=False)
    assert (result.run_dir / "model" / "adapter_model.safetensors").is_file()
    assert not (result.run_dir / "model" / "merged").exists()
    assert "merged_model" not in result.summary["saved"]


def test_saved_adapter_config_lists_each_real_module_once(tiny_bert_dir, tmp_path):
    """PEFT adds its SEQ_CLS default heads (classifier, score) to the recipe's list; the
    saved file must name each trained module once, and none the model lacks."""
    import json

    bert = load_model(ModelSection(name_or_path=str(tiny_bert_dir), from_scratch=True), LABELS)
    bert = make_cut("lora", modules_to_save=["classifier", "pooler"]).prepare_model(bert, run_context())
    bert.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"]
    assert sorted(saved) == ["classifier", "pooler"]
    assert any("pooler.modules_to_save" in n for n, p in bert.named_parameters() if p.requires_grad)
