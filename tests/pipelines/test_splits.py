from __future__ import annotations

import pytest

from dataset.layout import SPLITS, validate_fractions
from pipelines.splits import assign_split, with_sample_id

pytestmark = pytest.mark.spark
FRACTIONS = {"train": 0.7, "validation": 0.2, "test": 0.1}


def splits_of(spark, paths, fractions=FRACTIONS, partitions=1):
    df = spark.createDataFrame([(p,) for p in paths], "relpath string").repartition(partitions)
    return {r["relpath"]: r["split"] for r in assign_split(df, fractions=fractions).collect()}


def test_split_depends_only_on_the_path(spark):
    paths = [f"class{i % 7}/img_{i}.png" for i in range(2000)]
    alone = splits_of(spark, paths)
    reshuffled = splits_of(spark, list(reversed(paths)) + [f"new/extra_{i}.jpg" for i in range(500)], partitions=5)
    assert all(reshuffled[p] == alone[p] for p in paths)
    assert set(alone.values()) == set(SPLITS)


def test_split_sizes_follow_the_fractions(spark):
    assigned = splits_of(spark, [f"c/{i}.png" for i in range(20000)])
    for name, fraction in FRACTIONS.items():
        share = sum(1 for s in assigned.values() if s == name) / len(assigned)
        assert abs(share - fraction) < 0.015, (name, share)


def test_a_zero_fraction_gets_no_rows(spark):
    assigned = splits_of(spark, [f"c/{i}.png" for i in range(3000)], {"train": 0.9, "validation": 0.0, "test": 0.1})
    assert "validation" not in set(assigned.values())


def test_sample_id_is_stable_and_distinct(spark):
    df = spark.createDataFrame([(f"c/{i}.png",) for i in range(5000)], "relpath string")
    first = {r["relpath"]: r["sample_id"] for r in with_sample_id(df).collect()}
    second = {r["relpath"]: r["sample_id"] for r in with_sample_id(df.repartition(3)).collect()}
    assert first == second and len(set(first.values())) == len(first)


@pytest.mark.parametrize("fractions, message", [
    ({"train": 0.8, "validation": 0.1}, "exactly"),
    ({"train": 0.8, "validation": 0.1, "test": 0.2}, "add up to 1"),
    ({"train": 1.2, "validation": -0.1, "test": -0.1}, "outside"),
    ({"train": 0.0, "validation": 0.5, "test": 0.5}, "train fraction"),
])
def test_bad_fractions_are_refused(fractions, message):
    with pytest.raises(ValueError, match=message):
        validate_fractions(fractions)
