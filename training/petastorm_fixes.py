"""Two fixes to Petastorm 0.13.1's readers: a race that ends a read early, and the pickled schema it loads.

**The early end.** A race in Petastorm 0.13.1's thread pool ends a read early, often with zero rows.

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

**The pickled schema.** Every Petastorm reader unpickles the Unischema stored in ``<split>/_common_metadata``
(``petastorm.etl.dataset_metadata.get_schema``; ``make_batch_reader`` even does so twice, once only to warn). That
pickle refers to ``pyspark.sql.types``, so no process without pyspark can read a dataset (GPU training nodes have
neither Spark nor Java), and whoever can write to a dataset's folder runs code in every process that reads it.
bigtrain's readers never need it: they read the columns as Parquet stores them (``make_batch_reader``) and know the
rest from the snapshot's manifest. Inside ``arrow_schema_only()`` the stored schema counts as absent, so Petastorm
builds its schema from the Parquet files' Arrow schema (``Unischema.from_arrow_schema``) and never loads the
pickle. Outside it, Petastorm behaves as released (``make_reader`` on image fields needs the pickled codecs).
"""
from __future__ import annotations

import contextlib
import contextvars

import petastorm.reader
from petastorm.etl import dataset_metadata
from petastorm.workers_pool.thread_pool import ThreadPool


class OrderedEndThreadPool(ThreadPool):
    def all_workers_done(self) -> bool:
        ventilator = self._ventilator
        if ventilator is not None and not ventilator.completed():
            return False
        return super().all_workers_done()


_ARROW_SCHEMA_ONLY = contextvars.ContextVar("bigtrain_arrow_schema_only", default=False)
_petastorm_get_schema = dataset_metadata.get_schema


def _get_schema(dataset):
    if _ARROW_SCHEMA_ONLY.get():
        raise dataset_metadata.PetastormMetadataError(
            "bigtrain reads the schema from the Parquet files, not from the pickle in _common_metadata")
    return _petastorm_get_schema(dataset)


@contextlib.contextmanager
def arrow_schema_only():
    """Readers made inside this block (in this thread) take their schema from the Parquet files' Arrow schema
    and never unpickle the one stored in the dataset."""
    token = _ARROW_SCHEMA_ONLY.set(True)
    try:
        yield
    finally:
        _ARROW_SCHEMA_ONLY.reset(token)


def install() -> None:
    """Make ``petastorm.make_reader``/``make_batch_reader`` build ``OrderedEndThreadPool``, and let
    ``arrow_schema_only`` keep them from loading the stored pickle (idempotent)."""
    petastorm.reader.ThreadPool = OrderedEndThreadPool
    dataset_metadata.get_schema = _get_schema
