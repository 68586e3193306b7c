"""Deterministic train/validation/test assignment and stable row ids, from a hash of a key column.

The split of a row depends only on its key (its content fingerprint, or a text's normalised content; the file's
relative path or the record's source where asked), never on partitioning, row order or the other rows, so
re-running a job, adding files or moving the input root keeps every existing row in its split, and copies of one
content share theirs.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dataset.layout import validate_fractions
from dataset.rows import FINGERPRINT

_BUCKETS = 1_000_000


def split_column(key: Column, fractions: dict[str, float]) -> Column:
    return split_of_hash(F.xxhash64(key), fractions)


def split_of_hash(hashed: Column, fractions: dict[str, float]) -> Column:
    """The split of a row from a 64-bit hash (a key's ``xxhash64``, or a content fingerprint)."""
    bucket = F.pmod(hashed, F.lit(_BUCKETS))
    train_end = int(round(fractions["train"] * _BUCKETS))
    validation_end = train_end + int(round(fractions["validation"] * _BUCKETS))
    return (F.when(bucket < train_end, F.lit("train"))
            .when(bucket < validation_end, F.lit("validation"))
            .otherwise(F.lit("test")))


def split_of_hash_value(hashed: int, fractions: dict[str, float]) -> str:
    """``split_of_hash`` of one hash on the driver: the split Spark gives a row of that hash."""
    bucket = hashed % _BUCKETS  # Python's % of a negative number is Spark's pmod
    train_end = int(round(fractions["train"] * _BUCKETS))
    validation_end = train_end + int(round(fractions["validation"] * _BUCKETS))
    return "train" if bucket < train_end else "validation" if bucket < validation_end else "test"


def assign_split(df: DataFrame, *, fractions: dict[str, float], key_col: str = "relpath") -> DataFrame:
    """Add ``split`` (train/validation/test) from a hash of ``key_col``."""
    validate_fractions(fractions)
    return df.withColumn("split", split_column(F.col(key_col), fractions))


def assign_split_by_content(df: DataFrame, *, fractions: dict[str, float], fallback_col: str) -> DataFrame:
    """Add ``split`` from the row's content fingerprint (``dataset.rows.FINGERPRINT``), so that copies of one
    content share a split; a row without one (a rejected record) from a hash of ``fallback_col``."""
    validate_fractions(fractions)
    hashed = F.coalesce(F.col(FINGERPRINT), F.xxhash64(F.col(fallback_col)))
    return df.withColumn("split", split_of_hash(hashed, fractions))


def with_sample_id(df: DataFrame, *, key_col: str = "relpath") -> DataFrame:
    """Add ``sample_id``, a stable 64-bit id of the row (tests and evaluation use it to prove exactly-once reads)."""
    return df.withColumn("sample_id", F.xxhash64(F.col(key_col)))
