"""Distillation: the student is built from the teacher, and its training loss uses the teacher."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cuts_helpers import initial_state, make_cut, run_context
from leantrain import train
from leantrain.compress.distill import kd_loss_sum, load_teacher
from leantrain.compress.structure import block_list


def _student(cut_recipe, tiny_teacher_run, **settings):
    _, model, data, task = initial_state(cut_recipe)
    cut = make_cut("distill", teacher=str(tiny_teacher_run), **settings)
    model = cut.prepare_model(model, run_context())
    batch = data.collate([data.train[i] for i in range(8)])
    return cut, model.train(), batch, task


def test_student_keeps_mapped_blocks_initialised_from_the_teacher(cut_recipe, tiny_teacher_run):
    cut, student, _, _ = _student(cut_recipe, tiny_teacher_run, keep_layers=[1])
    teacher = load_teacher(str(tiny_teacher_run), like=student)
    assert len(block_list(student)[2]) == 1 and student.config.num_hidden_layers == 1
    assert cut.mapping == [1]
    s_state, t_state = student.state_dict(), teacher.state_dict()
    assert torch.equal(s_state["bert.encoder.layer.0.output.dense.weight"], t_state["bert.encoder.layer.1.output.dense.weight"])
    assert torch.equal(s_state["classifier.weight"], t_state["classifier.weight"])


def test_training_loss_mixes_task_and_teacher_terms(cut_recipe, tiny_teacher_run):
    cut, student, batch, task = _student(cut_recipe, tiny_teacher_run, keep_layers=1, alpha=0.3, temperature=2.0)
    student.eval()  # no dropout: the forward below is deterministic
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = student(**inputs).logits
        teacher_logits = cut.teacher(**inputs).logits
    expected = 0.3 * F.cross_entropy(logits, batch["labels"], reduction="sum") + 0.7 * kd_loss_sum(logits, teacher_logits, 2.0)
    student.train()
    for module in student.modules():  # keep train mode (the cut acts in training) without dropout noise
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    run = run_context()

    def training_loss():
        return cut.adjust_example_losses(task.example_losses(student, batch), batch, run).sum()

    loss = training_loss()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(F.cross_entropy(logits, batch["labels"], reduction="sum").item(), rel=1e-3)

    # Another teacher, another loss: the gradient really comes from the teacher's outputs.
    cut.teacher.classifier.weight.data.mul_(-1)
    assert training_loss().item() != pytest.approx(loss.item(), rel=1e-3)
    # Evaluation (eval mode) reports the plain task loss.
    student.eval()
    with torch.no_grad():
        plain = training_loss()
    assert plain.item() == pytest.approx(F.cross_entropy(logits, batch["labels"], reduction="sum").item(), rel=1e-5)


def test_teacher_logit_cache_is_written_and_reused(cut_recipe, tiny_teacher_run, tmp_path):
    recipe = copy.deepcopy(cut_recipe)
    recipe["cuts"] = {"distill": {"teacher": str(tiny_teacher_run), "keep_layers": 1, "cache_dir": str(tmp_path / "cache")}}
    summary = train(recipe, show_progress=False).summary
    first, seen = summary["extras"], summary["samples_seen"]
    assert first["distill_cache_misses"] + first["distill_cache_hits"] == seen
    assert first["distill_cache_hits"] >= seen // 2  # the second epoch reads the first one's logits
    assert len(list((tmp_path / "cache").glob("teacher-*.safetensors"))) == 1
    recipe["output"]["dir"], recipe["train"]["epochs"] = str(tmp_path / "again"), 1
    again = train(recipe, show_progress=False).summary
    assert again["extras"]["distill_cache_misses"] == 0
    assert again["extras"]["distill_cache_hits"] == again["samples_seen"]


def test_causal_lm_student_matches_the_teacher_per_next_token(tiny_llama_dir, topic_csv, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    teacher_dir = tmp_path / "teacher"
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama_dir)).save_pretrained(teacher_dir)
    recipe = {"model": {"name_or_path": str(tiny_llama_dir), "task": "causal-lm", "from_scratch": True},
              "data": {"train": str(topic_csv), "max_length": 32}, "output": {"dir": str(tmp_path / "run")}}
    _, student, data, task = initial_state(recipe)
    cut = make_cut("distill", teacher=str(teacher_dir), keep_layers=1, alpha=0.0, temperature=1.5,
                   init_from_teacher=False)
    student = cut.prepare_model(student, run_context()).train()
    batch = data.collate([data.train[i] for i in range(4)])
    loss = cut.adjust_example_losses(task.example_losses(student, batch), batch, run_context()).sum()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, t = student(**inputs).logits[:, :-1], cut.teacher(**inputs).logits[:, :-1]
    vocab = s.shape[-1]
    expected = kd_loss_sum(s.reshape(-1, vocab), t.reshape(-1, vocab), 1.5, batch["labels"][:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert student.config.num_hidden_layers == 1
