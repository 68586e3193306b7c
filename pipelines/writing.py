"""Writing a snapshot's splits and its rejected records, in as few Spark jobs as the layout allows.

All splits are written by one Spark job (``partitionBy("split")``, each split then moved to ``<snapshot>/<split>/``):
rows are routed so that every split is a multiple of ``ranks`` files of one row group each, whose sizes differ by
at most one row (``route``, from the rows per input partition that ``pipelines.outcomes`` counted, so the routing
needs no counting pass of its own). Petastorm's metadata (``_common_metadata`` with the pickled Unischema and the
row groups per file) is written on the driver from the files' footers, with Petastorm's own functions: what
``materialize_dataset`` writes, without its Spark pass per split. The rejected table is written only when a
record was rejected.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import warnings
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import DatasetError
from core.paths import filesystem, join
from dataset import layout
from pipelines.storage import spark_job

log = logging.getLogger(__name__)

STAGING_DIR = "_bt_splits"   # below the snapshot: Spark's partitioned output, before each split is moved out
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

    def lookup(mapping: dict, key):
        return F.create_map(*[F.lit(x) for pair in sorted(mapping.items()) for x in pair])[key]

    split_index = lookup({s: i for i, s in enumerate(order)}, F.col("split"))
    mid = F.col("_bt_mid")
    code = F.shiftright(mid, _ROW_BITS) * len(order) + split_index
    index = lookup({k: v for k, v in shift.items()}, code).cast("long") + mid.bitwiseAND(F.lit((1 << _ROW_BITS) - 1))
    target = lookup(base, F.col("split")) + F.pmod(index, lookup(files, F.col("split")))
    key = lookup({p: k for p, k in keys.items()}, target).cast("long")
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


def parquet_options(row_group_size_mb: int) -> dict[str, str]:
    """The Parquet settings ``materialize_dataset`` puts in the Hadoop configuration for its write, as options of
    this write only: row groups of ``row_group_size_mb``, sizes checked from the third row, no summary files."""
    return {"parquet.block.size": str(row_group_size_mb * 1024 * 1024), "parquet.block.size.row.check.min": "3",
            "parquet.row-group.size.row.check.min": "3", "parquet.summary.metadata.level": "NONE",
            "parquet.summary.metadata.propagate-errors": "true"}


def write_petastorm_metadata(spark: SparkSession, url: str, schema) -> None:
    """``_common_metadata`` of the Parquet files at ``url`` as ``materialize_dataset`` writes it (Petastorm's
    pickled Unischema, then the row groups of each file as JSON), with Petastorm's own functions and file system;
    the footers are read here on the driver instead of in a Spark job."""
    from petastorm import utils
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY, load_row_groups
    from petastorm.fs_utils import FilesystemResolver
    from pyarrow import parquet as pq

    resolver = FilesystemResolver(url, spark.sparkContext._jsc.hadoopConfiguration(),
                                  user=spark.sparkContext.sparkUser())
    fs, path = resolver.filesystem_factory()(), resolver.get_dataset_path()
    with warnings.catch_warnings():  # petastorm 0.13 runs on pyarrow's deprecated legacy dataset API
        warnings.simplefilter("ignore", FutureWarning)
        dataset = pq.ParquetDataset(path, filesystem=fs, validate_schema=False)
        utils.add_to_dataset_metadata(dataset, UNISCHEMA_KEY, pickle.dumps(schema))
        row_groups = {}
        for piece in dataset.pieces:  # materialize_dataset's order (the JSON keeps it)
            with fs.open(piece.path) as fh:
                row_groups[os.path.relpath(piece.path, dataset.paths)] = pq.read_metadata(fh).num_row_groups
        utils.add_to_dataset_metadata(dataset, ROW_GROUPS_PER_FILE_KEY, json.dumps(row_groups))
        load_row_groups(pq.ParquetDataset(path, filesystem=fs, validate_schema=False))  # as materialize_dataset checks


def write_splits(spark: SparkSession, rows: DataFrame, *, groups: list[dict[str, Any]], output_url: str, schema,
                 label_names: list[str], row_group_size_mb: int, ranks: int,
                 rejected_columns: list[str]) -> dict[str, Any]:
    """Write the accepted rows (``reason`` null) as one Petastorm dataset per split and the rest to ``rejected/``.

    ``groups`` are ``rows`` counted by ``pipelines.outcomes`` (``Outcomes.resolve``: per partition, split,
    ``label``, ``category``, with ``rows`` and ``bytes``, the row's main payload that sizes the row groups).
    Row counts are read back from the Parquet footers: the summary's numbers are what is on disk, and a
    mismatch, or row groups of a split that differ by more than a row, is an error.
    """
    accepted = [g for g in groups if g["category"] is None]
    rows_of = {s: sum(g["rows"] for g in accepted if g["split"] == s) for s in layout.SPLITS}
    files = {s: row_groups_for(rows_of[s], sum(g["bytes"] or 0 for g in accepted if g["split"] == s),
                               row_group_size_mb=row_group_size_mb, shard_multiple=ranks) for s in layout.SPLITS}
    columns = [F.col(name) for name in schema.fields]
    kept = rows.where(F.col("reason").isNull()).select(*columns, "split")
    with spark_job(spark, "write", f"{sum(rows_of.values())} rows in {sum(files.values())} files -> {output_url}"):
        if any(rows_of.values()):
            counts: dict[tuple[int, str], int] = {}
            for g in accepted:
                counts[(g["pid"], g["split"])] = counts.get((g["pid"], g["split"]), 0) + g["rows"]
            staging = join(output_url, STAGING_DIR)
            (route(kept, counts, {s: n for s, n in files.items() if n}).write.partitionBy("split")
             .options(**parquet_options(row_group_size_mb)).mode("overwrite").parquet(staging))
            _move_splits(staging, output_url, [s for s in layout.SPLITS if rows_of[s]])
        for split in (s for s in layout.SPLITS if not rows_of[s]):  # Spark writes one file: the schema, no rows
            kept.where(F.lit(False)).drop("split").write.options(**parquet_options(row_group_size_mb)) \
                .mode("overwrite").parquet(join(output_url, split))
    splits = {}
    for split in layout.SPLITS:
        url = join(output_url, split)
        write_petastorm_metadata(spark, url, schema)
        on_disk = layout.row_group_sizes(url)
        log.info("wrote split %s: %d rows in %d row groups -> %s", split, sum(on_disk), len(on_disk), url)
        if sum(on_disk) != rows_of[split] or (on_disk and max(on_disk) - min(on_disk) > 1):
            raise DatasetError(f"split {url}: row groups of {on_disk} rows on disk, {rows_of[split]} rows expected "
                               f"in {files[split]} near-equal row groups")
        per_class = {name: 0 for name in label_names}
        for g in accepted:
            if g["split"] == split:
                per_class[label_names[g["label"]]] += g["rows"]
        splits[split] = {"rows": rows_of[split], "row_groups": len(on_disk), "per_class": per_class, "url": url}
    rejected_url = join(output_url, layout.REJECTED_DIR)
    rejected = sum(g["rows"] for g in groups if g["category"] is not None)
    if rejected:  # no records rejected: no rejected/ folder (the manifest says 0; nothing reads it then)
        with spark_job(spark, "rejected", f"{rejected} rejected records -> {rejected_url}"):
            write_rejected(rows.where(F.col("reason").isNotNull()).select(*rejected_columns), url=rejected_url)
    return summarise(groups, splits, output_url=output_url, rejected_url=rejected_url)


def _move_splits(staging: str, output_url: str, names: list[str]) -> None:
    """Spark's ``<staging>/split=<name>/`` folders to ``<output>/<name>/``, each with the ``_SUCCESS`` marker a
    write of its own leaves; the staging folder removed."""
    fs, _ = filesystem(output_url)
    for name in names:
        source, target = filesystem(join(staging, f"split={name}"))[1], filesystem(join(output_url, name))[1]
        fs.mv(source, target, recursive=True)
        fs.touch(target.rstrip("/") + "/_SUCCESS")
    fs.rm(filesystem(staging)[1], recursive=True)


def write_rejected(df: DataFrame, *, url: str) -> None:
    df.coalesce(1).write.mode("overwrite").parquet(url)


def summarise(stats: list, splits: dict[str, dict], *, output_url: str, rejected_url: str) -> dict[str, Any]:
    """The job summary; records read must equal rows written plus records rejected, or the job fails."""
    by_reason: dict[str, int] = {}
    for r in stats:
        if r["category"] is not None:
            by_reason[r["category"]] = by_reason.get(r["category"], 0) + r["rows"]
    records_read = sum(r["rows"] for r in stats)
    rows_written = sum(s["rows"] for s in splits.values())
    rejected = sum(by_reason.values())
    if records_read != rows_written + rejected:
        raise DatasetError(f"{output_url}: {records_read} read != {rows_written} written + {rejected} rejected")
    return {"records_read": records_read, "rows_written": rows_written, "rejected": rejected,
            "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            "rejected_url": rejected_url, "splits": splits, "output": output_url}
