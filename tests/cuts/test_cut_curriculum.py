"""Curriculum: the first epochs go from short to long steps; later epochs are untouched."""
from __future__ import annotations

import pytest

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
