"""Rows of a split read the way a plain Petastorm user reads them (``make_reader`` decoding the stored codecs, or
``make_batch_reader`` for plain columns), one thread, stored order: the datasets stay Petastorm datasets. The
fixes of ``training.petastorm_fixes`` are installed first (Petastorm 0.13.1 can end a read early)."""
from __future__ import annotations

import collections
import contextlib

from training import petastorm_fixes


def petastorm_rows(split_url: str, fields: tuple[str, ...], *, columnar: bool) -> list:
    from petastorm import make_batch_reader, make_reader

    petastorm_fixes.install()
    make = make_batch_reader if columnar else make_reader
    schema = petastorm_fixes.arrow_schema_only() if columnar else contextlib.nullcontext()
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
