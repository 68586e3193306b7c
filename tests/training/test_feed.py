"""Batches on their way to the step (``training.feed``): in order, through a thread or not, with the collate hook
on the training thread, errors where they happened, and the source closed when the consumer stops."""
from __future__ import annotations

import threading

import pytest
import torch

from training.feed import feed
from training.ledger import LoaderTimes


def batches(n: int, fail_at: int | None = None, log: list | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"batch {i} is damaged")
            yield (torch.full((2, 3), i),), torch.tensor([i, i]), torch.tensor([10 * i, 10 * i + 1])
    finally:
        if log is not None:
            log.append(("closed", threading.current_thread().name))


@pytest.mark.parametrize("threaded", [False, True])
def test_batches_arrive_in_order_collated_on_the_training_thread(threaded):
    seen = []

    def collate(inputs):
        seen.append(threading.current_thread() is threading.main_thread())
        return (inputs[0].float() / 2,)

    times = LoaderTimes()
    out = [fed.ready() for fed in feed(batches(5), device=torch.device("cpu"), collate=collate, times=times,
                                       threaded=threaded)]
    assert [int(f.labels[0]) for f in out] == list(range(5))
    assert [float(f.inputs[0][0, 0]) for f in out] == [i / 2 for i in range(5)]
    assert [f.ids.tolist() for f in out][2] == [20, 21]
    assert seen == [True] * 5  # the hook ran on the caller's thread, in order, even when a thread fed it
    assert times.seconds["handover"] > 0


@pytest.mark.parametrize("threaded", [False, True])
def test_an_error_arrives_after_the_batches_before_it_and_the_source_is_closed(threaded):
    log: list = []
    got = []
    with pytest.raises(ValueError, match="batch 3 is damaged"):
        for fed in feed(batches(6, fail_at=3, log=log), device=torch.device("cpu"), threaded=threaded):
            got.append(int(fed.ready().labels[0]))
    assert got == [0, 1, 2] and [entry[0] for entry in log] == ["closed"]


def test_a_consumer_that_stops_early_closes_the_source_in_the_feeding_thread():
    log: list = []
    fed = feed(batches(100, log=log), device=torch.device("cpu"), threaded=True)
    next(fed)
    fed.close()
    assert log == [("closed", "bigtrain-prefetch")]
