"""The Petastorm schemas the Spark jobs write take their column names, in order, from the row contract."""
from __future__ import annotations

from dataset.rows import IMAGE, SEQUENCE
from pipelines.schemas import image_unischema, sequence_unischema


def test_the_written_schemas_are_the_row_contract():
    for codec in ("png", "raw"):
        assert tuple(image_unischema(8, 3, codec).fields) == IMAGE.stored
    assert tuple(sequence_unischema().fields) == SEQUENCE.stored
