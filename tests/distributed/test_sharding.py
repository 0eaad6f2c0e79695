"""Rank shares of an epoch and the stop agreement, without starting processes."""
from __future__ import annotations

import collections
import signal

import pytest

from leantrain.data.batching import epoch_order
from leantrain.engine.distributed import shard_epoch
from leantrain.engine.signals import Preempted, StopSignals


@pytest.mark.parametrize("world,per_rank", [(2, 1), (3, 2), (4, 1)])
@pytest.mark.parametrize("n", [34, 41])
def test_rank_shares_cover_the_rest_of_the_epoch_once_with_equal_step_counts(world, per_rank, n):
    batches = epoch_order(n, 4, seed=3, epoch=1, micro_batches=per_rank * world)
    group = per_rank * world
    for start in range(0, len(batches), group):
        shares = [shard_epoch(batches, start, per_rank, world, rank) for rank in range(world)]
        trained = collections.Counter(i for share in shares for indices, real in share if real for i in indices)
        assert trained == collections.Counter(i for b in batches[start:] for i in b)
        steps = -(-(len(batches) - start) // group)
        # Every rank takes part in every step: per_rank micro-batches, at least one (a
        # stand-in when its share of a short last step is empty).
        for share in shares:
            assert all(real for _, real in share[: (steps - 1) * per_rank])
            assert 1 <= len(share[(steps - 1) * per_rank:]) <= per_rank


def test_one_process_trains_the_epoch_in_its_order():
    batches = epoch_order(34, 4, seed=3, epoch=0, micro_batches=2)
    assert shard_epoch(batches, 4, 2, 1, 0) == [(b, True) for b in batches[4:]]


def test_a_signal_on_another_rank_stops_this_one_without_counting_as_its_own():
    signals = StopSignals()
    signals.agree = lambda signum: max(signum, int(signal.SIGTERM))  # another rank got SIGTERM
    with pytest.raises(Preempted, match="SIGTERM"):
        signals.check()
    assert signals.signum is None and signals.name == "SIGTERM"
    signals._handle(signal.SIGTERM, None)  # this rank's own first SIGTERM: still no abort
    assert signals.signum == signal.SIGTERM


def test_no_signal_anywhere_keeps_training():
    signals = StopSignals()
    signals.agree = lambda signum: signum
    signals.check()
    assert not signals.requested


def test_the_budget_counts_every_device():
    from types import SimpleNamespace

    from leantrain.engine.run import as_recipe, budget_guard
    from leantrain.engine.state import TrainState

    guard = budget_guard(as_recipe({"budget": {"max_usd": 1.0}, "hardware": {"price_per_hour": 1.0}}))
    half_hour = SimpleNamespace(state=TrainState(step=1, train_seconds=1800.0), total_steps=1, log=print, world_size=1)
    assert guard(half_hour) is None  # $0.50 on one device
    half_hour.world_size = 2
    assert "budget.max_usd" in guard(half_hour)  # $1.00 on two
