"""Petastorm reading: every row of one rank's shard of a split, exactly once per pass (namedtuples of the fields
asked for), with the fixes Petastorm 0.13.1 needs (training.petastorm_fixes) and object stores through pyarrow's
legacy file system interface."""
from __future__ import annotations

import collections
import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from dataset.info import SplitInfo
from training import petastorm_fixes
from training.shards import ShardPlan

petastorm_fixes.install()  # Petastorm 0.13.1 can end a read early and unpickles schemas; see training/petastorm_fixes.py
# Sequence datasets hold only plain Parquet types (ScalarCodec), which make_batch_reader reads as they are; its
# warning that a Petastorm dataset wants make_reader is about codec-encoded fields.
warnings.filterwarnings("ignore", message=r"Please use make_reader", category=UserWarning)


@dataclass(frozen=True)
class ReadOptions:
    fields: tuple[str, ...]
    workers: int = 2
    shuffle: bool = True
    shuffle_buffer: int = 1024
    seed: int = 0
    # True: Petastorm's make_batch_reader (whole row groups as columns, as Parquet stores them; never unpickles the
    # stored schema). False: make_reader, which decodes Petastorm codecs (images to arrays) and for that needs the
    # Unischema pickled in the dataset (and pyspark to unpickle it): only for reading a dataset the way plain
    # Petastorm does; training and evaluation never use it.
    columnar: bool = True
    sort_key: Callable[[Any], Any] | None = None  # training: batch rows of similar key (length) together
    prefetch: int = 0                            # batches collated ahead in a background thread (0: none)


def _reader_kwargs(plan: ShardPlan, options: ReadOptions, pass_seed: int) -> dict[str, Any]:
    if plan.by_row_group:
        return dict(cur_shard=plan.rank, shard_count=plan.world, workers_count=options.workers,
                    shuffle_row_groups=options.shuffle, shuffle_rows=options.shuffle, seed=pass_seed)
    # One worker and no shuffling keep the row order fixed, so "every world-th row" is a partition of the split.
    return dict(workers_count=1, shuffle_row_groups=False, shuffle_rows=False)


def _columnar_rows(reader, fields: tuple[str, ...]) -> Iterator[Any]:
    """Rows out of make_batch_reader's column batches (one per row group), as light namedtuples."""
    make_row = row_type(fields)
    for batch in reader:
        yield from map(make_row._make, zip(*(getattr(batch, name) for name in fields)))


_ROW_TYPES: dict[tuple[str, ...], type] = {}


def row_type(fields: tuple[str, ...]) -> type:
    """The namedtuple type of rows of ``fields`` (one per set of fields: namedtuple types are costly to make)."""
    if fields not in _ROW_TYPES:
        _ROW_TYPES[fields] = collections.namedtuple("Row", fields)
    return _ROW_TYPES[fields]


def legacy_filesystem(url: str):
    """For object stores: the fsspec filesystem wrapped in pyarrow's legacy interface, or None for local files.

    Petastorm 0.13.1 hands s3:// datasets to pyarrow 14 as a bare fsspec filesystem, which sends them down the new
    Dataset API, and that refuses Petastorm's ``validate_schema`` argument ("Keyword 'validate_schema' is not yet
    supported with the new Dataset API"). Wrapped, they take the legacy path that local files take. Credentials and
    endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...).
    """
    import fsspec

    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "file":
        return None
    return _legacy_wrapper()(fsspec.filesystem(scheme))


def _legacy_wrapper():
    """pyarrow's DaskFileSystem (the legacy wrapper of an fsspec filesystem) with the two methods it leaves out;
    its S3FSWrapper calls a private s3fs method that is a coroutine in current s3fs."""
    from pyarrow.filesystem import DaskFileSystem

    class FsspecLegacyFileSystem(DaskFileSystem):
        def isdir(self, path):
            return self.fs.isdir(path)

        def isfile(self, path):
            return self.fs.isfile(path)

    return FsspecLegacyFileSystem


def read_shard_once(split: SplitInfo, plan: ShardPlan, options: ReadOptions, pass_seed: int) -> Iterator[Any]:
    """Every row of this rank's shard exactly once (namedtuples of the requested fields)."""
    from petastorm import (  # heavy: only where a split is read
        make_batch_reader,
        make_reader,
    )

    if split.rows == 0:
        return
    make = make_batch_reader if options.columnar else make_reader
    schema = petastorm_fixes.arrow_schema_only() if options.columnar else contextlib.nullcontext()
    with schema:  # columnar: the columns as Parquet stores them; the pickled schema is never loaded
        reader = make(split.url, schema_fields=list(options.fields), reader_pool_type="thread", num_epochs=1,
                      filesystem=legacy_filesystem(split.url), **_reader_kwargs(plan, options, pass_seed))
    try:
        rows = _columnar_rows(reader, options.fields) if options.columnar else iter(reader)
        for position, row in enumerate(rows):
            if plan.by_row_group or position % plan.world == plan.rank:
                yield row
    finally:  # not `with reader:`, whose exit prints "Cache cleanup complete." to stdout on every pass
        reader.stop()
        reader.join()
