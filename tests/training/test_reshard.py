"""An epoch resumed on another world size (training.order.remainder): the rows the old ranks trained before the
stop, read off their batches, and the rows the new ranks train after it, read off theirs, are the split exactly
once; every new rank runs the same steps; padding only repeats rows of the remainder. Pure planning, no data."""
from __future__ import annotations

import numpy as np
import pytest

from training.order import EpochOrder, epoch_order, remainder, resumed_plan
from training.shards import plan_shard

SIZES = (13, 9, 11, 7, 10, 12)  # 62 rows in 6 row groups: uneven shards for 2 and 3 ranks
BATCH, SHUFFLE, SEED, EPOCH = 4, 8, 7, 2
SETTINGS = dict(batch_size=BATCH, seed=SEED, epoch=EPOCH, shuffle_rows=SHUFFLE)
LENGTHS = np.random.default_rng(0).integers(1, 30, sum(SIZES))  # a length per row, for length bucketing


def batches_of(order: EpochOrder, sizes, *, bucketing: bool = False) -> dict[int, list[tuple[int, bool]]]:
    """Epoch batch index -> [(row of the split, real?)], as the loader cuts them: each window's rows laid end to end,
    in ``positions`` order, ``batch_size`` at a time; a row is real when it is of the window's first ``real``."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    found = {}
    for window in order.windows:
        laid = np.concatenate([offsets[p.group] + np.arange(p.start, p.stop, p.step) for p in window.pieces])
        positions = order.positions(window, LENGTHS[laid] if bucketing else None)
        for b in range(window.batches):
            at = positions[b * BATCH:(b + 1) * BATCH]
            found[window.first_batch + b] = [(int(laid[p]), bool(p < window.real)) for p in at]
    return found


def lengths_of(window) -> np.ndarray:  # with SIZES
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    return LENGTHS[np.concatenate([offsets[p.group] + np.arange(p.start, p.stop, p.step) for p in window.pieces])]


def check_exactly_once(stretches, world, *, bucketing=False, sizes=SIZES):
    """Stretches ((w, end), ...) then ``world`` ranks to the epoch's end: every row of the split trained once."""
    real_rows, padding = [], []
    for i, (width, end) in enumerate(stretches):
        for rank in range(width):
            if i == 0:
                order = epoch_order(sizes, plan_shard(sizes, rank, width), **SETTINGS)
            else:
                left = remainder(sizes, stretches[:i], width, **SETTINGS,
                                 lengths_of=lengths_of if bucketing else None)
                order = epoch_order(sizes, resumed_plan(left, rank, width, stretches[:i]), left=left, **SETTINGS)
            start = stretches[i - 1][1] if i else 0
            batches = batches_of(order, sizes, bucketing=bucketing)
            assert order.first == start and min(batches) == start
            for b in range(start, end):
                real_rows += [row for row, real in batches[b] if real]
    left = remainder(sizes, stretches, world, **SETTINGS, lengths_of=lengths_of if bucketing else None)
    steps = set()
    for rank in range(world):
        plan = resumed_plan(left, rank, world, stretches)
        order = epoch_order(sizes, plan, left=left, **SETTINGS)
        batches = batches_of(order, sizes, bucketing=bucketing)
        assert sorted(batches) == list(range(stretches[-1][1], plan.steps(BATCH)))  # the epoch's steps from the stop
        assert all(len(rows) == BATCH for rows in batches.values())
        steps.add(plan.steps(BATCH))
        mine = [row for b in sorted(batches) for row, real in batches[b] if real]
        assert len(mine) == plan.local_rows
        real_rows += mine
        padding += [row for b in sorted(batches) for row, real in batches[b] if not real]
    assert len(steps) == 1  # equal steps on every new rank
    assert sorted(real_rows) == list(range(sum(sizes)))  # every row of the split once
    assert left.trained + sum(left.rows_per_rank) == sum(sizes)
    return left, set(padding)


@pytest.mark.parametrize("old, new", [(2, 3), (3, 2), (1, 2), (2, 1)])
@pytest.mark.parametrize("stop", [1, 3, 5])  # mid-window and at window ends (windows of 12 rows: 3 batches)
def test_a_stretch_resumed_on_another_world_size_trains_the_rest_of_the_split_once(old, new, stop):
    steps_before = plan_shard(SIZES, 0, old).steps(BATCH)
    stop = min(stop, steps_before - 1)
    left, padding = check_exactly_once(((old, stop),), new)
    assert left.trained > 0 and padding <= {r for part in left.parts for p in part
                                            for r in _rows(p)}  # padding repeats rows of the remainder only


def test_resumes_chain_and_length_bucketing_is_followed():
    check_exactly_once(((2, 3), (3, 5)), 1)
    check_exactly_once(((2, 3), (1, 6), (3, 7)), 2)
    check_exactly_once(((2, 2),), 3, bucketing=True)  # the window cut short is ordered by its rows' lengths


def test_fewer_row_groups_than_ranks_and_more_ranks_than_rows_left():
    check_exactly_once(((3, 2),), 2, sizes=(20,))  # row sharding: every 3rd row, pieces of step 3
    sizes = (9, 8)
    last = plan_shard(sizes, 0, 1).steps(BATCH) - 1  # one batch of rows left, over 7 ranks: some parts empty
    left, _ = check_exactly_once(((1, last),), 7, sizes=sizes)
    assert 0 in left.rows_per_rank


def test_a_plain_epoch_order_is_unchanged_by_the_resumed_path():
    plan = plan_shard(SIZES, 1, 2)
    order = epoch_order(SIZES, plan, **SETTINGS)
    assert (order.first, order.key, plan.stretches, plan.first_step) == (0, (), (), 0)
    assert order.end == plan.steps(BATCH) == order.batches


def _rows(piece):
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    return [int(offsets[piece.group] + r) for r in range(piece.start, piece.stop, piece.step)]
