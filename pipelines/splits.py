"""Deterministic train/validation/test assignment and stable row ids, from a hash of a key column.

The split of a row depends only on its key (the file's relative path), never on partitioning, row order or the
other rows, so re-running a job, adding files or moving the input root keeps every existing row in its split.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dataset.layout import validate_fractions

_BUCKETS = 1_000_000


def split_column(key: Column, fractions: dict[str, float]) -> Column:
    bucket = F.pmod(F.xxhash64(key), F.lit(_BUCKETS))
    train_end = int(round(fractions["train"] * _BUCKETS))
    validation_end = train_end + int(round(fractions["validation"] * _BUCKETS))
    return (F.when(bucket < train_end, F.lit("train"))
            .when(bucket < validation_end, F.lit("validation"))
            .otherwise(F.lit("test")))


def assign_split(df: DataFrame, *, fractions: dict[str, float], key_col: str = "relpath") -> DataFrame:
    """Add ``split`` (train/validation/test) from a hash of ``key_col``."""
    validate_fractions(fractions)
    return df.withColumn("split", split_column(F.col(key_col), fractions))


def with_sample_id(df: DataFrame, *, key_col: str = "relpath") -> DataFrame:
    """Add ``sample_id``, a stable 64-bit id of the row (tests and evaluation use it to prove exactly-once reads)."""
    return df.withColumn("sample_id", F.xxhash64(F.col(key_col)))
