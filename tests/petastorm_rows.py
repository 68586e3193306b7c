"""Rows of a split read the way a plain Petastorm user reads them (``make_reader`` decoding the stored codecs, or
``make_batch_reader`` for plain columns), one thread, stored order: the datasets stay Petastorm datasets. The
compatibility layer ``compat.petastorm`` is installed first (Petastorm 0.13.1 needs it on the current stack, and
it fixes a race that can end a read early)."""
from __future__ import annotations

import collections
import contextlib

from compat import petastorm as petastorm_compat


def petastorm_rows(split_url: str, fields: tuple[str, ...], *, columnar: bool) -> list:
    petastorm_compat.install()
    from petastorm import make_batch_reader, make_reader

    make = make_batch_reader if columnar else make_reader
    schema = petastorm_compat.arrow_schema_only() if columnar else contextlib.nullcontext()
    with schema:
        reader = make(split_url, schema_fields=list(fields), reader_pool_type="thread", workers_count=1,
                      num_epochs=1, shuffle_row_groups=False)
    try:
        if not columnar:
            return list(reader)
        row = collections.namedtuple("Row", fields)
        return [row._make(values) for batch in reader for values in zip(*(getattr(batch, f) for f in fields))]
    finally:
        reader.stop()
        reader.join()
