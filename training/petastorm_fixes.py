"""A fix for a race in Petastorm 0.13.1's thread pool that ends a read early, often with zero rows.

``ThreadPool.get_results`` decides that reading is over with two checks made one after the other:

    if self.all_workers_done():                  # every item ventilated so far was processed and consumed
        if self._ventilator.completed():         # the ventilator has ventilated every item
            raise EmptyResultError()

If the consumer evaluates the first check before the ventilator thread has handed out anything (0 of 0 done) and
the second after it has handed out everything, the reader ends at once: an epoch of zero rows with no error. The
same can happen mid-read and cut an epoch short. STACK.md records it (about 1 read in 8 right after a Spark write,
when the CPU is busy); here it was reproduced at 5 in 200 reads with two busy cores, and under horovodrun -np 2.
Upstream issue uber/petastorm#71 described it in 2018 and was closed as not reproducible.

The fix reads the ventilator's state *first*: the workers count as done only if the ventilator had already finished
before their counters were read, so the two checks agree. ``install()`` puts the fixed pool where ``make_reader``
looks it up. The loader also counts every epoch against the Parquet footers, so any other cause of missing rows
still fails loudly.
"""
from __future__ import annotations

import petastorm.reader
from petastorm.workers_pool.thread_pool import ThreadPool


class OrderedEndThreadPool(ThreadPool):
    def all_workers_done(self) -> bool:
        ventilator = self._ventilator
        if ventilator is not None and not ventilator.completed():
            return False
        return super().all_workers_done()


def install() -> None:
    """Make ``petastorm.make_reader``/``make_batch_reader`` build ``OrderedEndThreadPool`` (idempotent)."""
    petastorm.reader.ThreadPool = OrderedEndThreadPool
