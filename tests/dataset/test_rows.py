"""The row contract: one definition per dataset kind, and a clear error for a kind bigtrain does not have."""
from __future__ import annotations

import pytest

from core.errors import DatasetError
from dataset.rows import IMAGE, LABEL, SAMPLE_ID, SEQUENCE, rows_of


def test_each_kind_reads_its_features_label_and_id_from_the_columns_it_stores():
    for rows in (IMAGE, SEQUENCE):
        assert rows_of(rows.kind) is rows
        assert set(rows.read) <= set(rows.stored) and rows.source in rows.stored
        assert rows.read[-2:] == (LABEL, SAMPLE_ID)
    assert (IMAGE.length, SEQUENCE.length) == (None, "length")


def test_an_unknown_kind_is_named():
    with pytest.raises(DatasetError, match=r"dataset kind 'audio' is not one of image, sequence"):
        rows_of("audio")
