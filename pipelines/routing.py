"""Routing rows to output files: every split a multiple of ``ranks`` files of one row group each, whose sizes
differ by at most one row.

``row_groups_for`` decides how many files a split is written as; ``route`` sends each row to its file's partition
from the rows per input partition that ``incremental.group_counts`` counted, so the routing needs no counting pass
of its own. ``spark_hash_long`` is Spark's Murmur3 of a long, computed on the driver to pick the keys that land on
each partition.
"""
from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.session import constant_map

_ROW_BITS = 33  # monotonically_increasing_id() = partition index << 33 | row index within the partition


def row_groups_for(num_rows: int, num_bytes: int, *, row_group_size_mb: int, shard_multiple: int) -> int:
    """How many files (one row group each) to write a split as.

    Enough that each stays under ~80% of the row-group size (so Parquet never cuts a second, tiny row group),
    rounded up to a multiple of ``shard_multiple`` (the number of training ranks expected), and never more than
    there are rows. ``route`` then makes them equal to within one row.
    """
    if num_rows == 0:
        return 0
    by_size = math.ceil(num_bytes / (0.8 * row_group_size_mb * 1024 * 1024))
    wanted = max(shard_multiple, math.ceil(max(by_size, 1) / shard_multiple) * shard_multiple)
    return min(wanted, num_rows)


def route(df: DataFrame, counts: dict[tuple[int, str], int], files: dict[str, int]) -> DataFrame:
    """``df`` in one partition per output file: the rows of split ``s`` over ``files[s]`` partitions (the splits'
    partitions in name order) whose sizes differ by at most one row.

    ``counts`` are ``df``'s rows per (input partition, split). Sorted by split within each partition (a local
    sort), the rows of a split in a partition are contiguous, so each row's index among its split's rows is its
    position plus a shift per (partition, split) known from ``counts``; index % files[s] picks its file, and a
    long key whose Murmur3 hash (what ``repartition(n, col)`` uses) lands on that partition takes it there.
    ``df`` must be deterministic (derived from persisted data or files) and partitioned as when counted.
    """
    order = sorted(files)
    base, total = {}, 0
    for split in order:
        base[split], total = total, total + files[split]
    shift, before = {}, {split: 0 for split in order}
    for pid in sorted({p for p, _ in counts}):
        start = 0
        for i, split in enumerate(order):
            n = counts.get((pid, split), 0)
            if n:
                shift[pid * len(order) + i] = before[split] - start
            start, before[split] = start + n, before[split] + n
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < total:  # the first long key that Spark's hash partitioning sends to each partition
        keys.setdefault(spark_hash_long(candidate) % total, candidate)
        candidate += 1

    split_index = constant_map({s: i for i, s in enumerate(order)}, "string", "bigint")[F.col("split")]
    mid = F.col("_bt_mid")
    code = F.shiftright(mid, _ROW_BITS) * len(order) + split_index
    index = constant_map(shift, "bigint", "bigint")[code] + mid.bitwiseAND(F.lit((1 << _ROW_BITS) - 1))
    target = (constant_map(base, "string", "bigint")[F.col("split")]
              + F.pmod(index, constant_map(files, "string", "bigint")[F.col("split")]))
    key = constant_map(keys, "bigint", "bigint")[target]
    return (df.sortWithinPartitions("split")
            .withColumn("_bt_mid", F.monotonically_increasing_id())
            .withColumn("_bt_key", key)
            .repartition(total, "_bt_key")
            .drop("_bt_mid", "_bt_key"))


def _int32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _rotl32(x: int, r: int) -> int:
    x &= 0xFFFFFFFF
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def spark_hash_long(value: int, seed: int = 42) -> int:
    """Spark's ``hash()`` of a LongType value (Murmur3_x86_32.hashLong with seed 42), as a signed 32-bit int."""
    def mix_k1(k1: int) -> int:
        return (_rotl32((k1 * 0xCC9E2D51) & 0xFFFFFFFF, 15) * 0x1B873593) & 0xFFFFFFFF

    def mix_h1(h1: int, k1: int) -> int:
        return (_rotl32(h1 ^ k1, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF

    value &= 0xFFFFFFFFFFFFFFFF
    h1 = mix_h1(mix_h1(seed & 0xFFFFFFFF, mix_k1(value & 0xFFFFFFFF)), mix_k1(value >> 32))
    h1 ^= 8
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & 0xFFFFFFFF
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & 0xFFFFFFFF
    h1 ^= h1 >> 16
    return _int32(h1)
