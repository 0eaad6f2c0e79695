"""Curriculum: the first epochs go from short to long steps; later epochs are untouched."""
from __future__ import annotations

import pytest
import torch

from cuts_helpers import make_cut, run_context
from leantrain.data.batching import epoch_order
from leantrain.errors import UserError


def _lengths(n=60):
    return [(i * 37) % 23 + 3 for i in range(n)]


@pytest.mark.parametrize("k", [1, 2, 3])  # 15 batches: k=2 leaves a short last step
def test_first_epoch_steps_are_ordered_short_to_long_and_keep_their_examples(k):
    lengths = _lengths()
    cut = make_cut("curriculum", epochs=1)
    run = run_context()
    run.micro_batches_per_step = k
    plain = epoch_order(len(lengths), 4, 0, 0, lengths, bucket=True, micro_batches=k)
    ordered = cut.order_batches(plain, 0, run, lengths)
    assert sorted(map(tuple, ordered)) == sorted(map(tuple, plain))  # same batches, new order
    steps = [ordered[i : i + k] for i in range(0, len(ordered), k)]
    full = [s for s in steps if len(s) == k and sum(map(len, s)) == 4 * k]
    longest = [max(lengths[i] for b in s for i in b) for s in full]
    assert longest == sorted(longest)
    if len(steps[-1]) < k:  # a short last step stays last, where the loop expects it
        assert steps[-1] == plain[len(plain) - len(steps[-1]):]
    assert cut.order_batches(plain, 0, run, lengths) == ordered  # deterministic (resume-safe)


def test_later_epochs_keep_the_shuffled_order_and_missing_lengths_is_an_error():
    lengths = _lengths()
    cut = make_cut("curriculum", epochs=1)
    plain = epoch_order(len(lengths), 4, 0, 1, lengths, bucket=True)
    assert cut.order_batches(plain, 1, run_context(), lengths) == plain
    with pytest.raises(UserError, match="cuts.curriculum"):
        cut.order_batches(plain, 0, run_context(), None)


def test_loss_curriculum_regroups_examples_from_lowest_to_highest_score_and_scores_once():
    n, k = 60, 2
    scores = torch.rand(n, generator=torch.Generator().manual_seed(4))
    calls = []
    run = run_context(score_examples=lambda: calls.append(1) or scores.clone())
    run.micro_batches_per_step = k
    cut = make_cut("curriculum", by="loss", epochs=1)
    plain = epoch_order(n, 4, 0, 0, micro_batches=k)  # 15 batches: a short last step of one batch
    ordered = cut.order_batches(plain, 0, run, None)
    assert [len(b) for b in ordered] == [len(b) for b in plain]
    assert ordered[-1] == plain[-1]  # the short last step stays last
    body = [i for b in ordered[:-1] for i in b]
    assert sorted(body) == sorted(i for b in plain[:-1] for i in b)  # same examples
    assert [float(scores[i]) for i in body] == sorted(float(scores[i]) for i in body)
    assert cut.order_batches(plain, 0, run, None) == ordered and len(calls) == 1
    # A resumed run restores the scores from the checkpoint instead of scoring again.
    restored = make_cut("curriculum", by="loss", epochs=1)
    restored.load_state_dict(cut.state_dict())
    assert restored.order_batches(plain, 0, run, None) == ordered and len(calls) == 1


def test_scoring_pass_gives_each_example_its_own_eval_mode_loss(tiny_recipe):
    from leantrain.engine.run import as_recipe
    from leantrain.engine.session import build_session

    recipe = as_recipe({**tiny_recipe, "cuts": {"curriculum": {"by": "loss"}}})
    session = build_session(recipe)
    scores = session.score_examples()
    assert scores.shape == (len(session.train_examples),) and session.run.model.training
    model = session.run.model.eval()
    with torch.no_grad():
        for i in (0, 5, len(session.train_examples) - 1):
            alone = session.collate([session.train_examples[i]])
            logits = model(**{k: v for k, v in alone.items() if k != "labels"}).logits
            expected = torch.nn.functional.cross_entropy(logits, alone["labels"])
            assert scores[i].item() == pytest.approx(expected.item(), abs=1e-4)


def test_loss_curriculum_trains_and_reports_its_scoring_pass(tiny_recipe):
    from leantrain import train

    tiny_recipe["cuts"] = {"curriculum": {"by": "loss", "epochs": 1}}
    summary = train(tiny_recipe, show_progress=False).summary
    assert summary["status"] == "completed"
    assert summary["extras"]["curriculum"]["scored_examples"] == summary["data"]["rows_train"]
    assert summary["extras"]["curriculum"]["mean_first_pass_loss"] > 0
