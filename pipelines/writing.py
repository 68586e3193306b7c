"""Writing a snapshot's Petastorm splits, its rejected table and the run's summary.

All splits of a snapshot are written by one Spark job (``partitionBy("split")``, each split then moved to
``<snapshot>/<split>/``), routed by ``pipelines.routing``. Petastorm's metadata (``_common_metadata`` with the
pickled Unischema and the row groups per file) is written on the driver from the files' footers with Petastorm's
own functions: what ``materialize_dataset`` writes, without its Spark pass per split. The rejected table is
written only when a record was rejected, by a Spark job of its own that runs beside the splits' write (a thread).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import threading
import warnings
from typing import Any, Callable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from compat import petastorm as petastorm_compat
from core.errors import DatasetError
from core.paths import filesystem, join
from dataset import layout
from pipelines.routing import route, row_groups_for
from pipelines.session import is_connect, spark_job, without_adaptive

log = logging.getLogger(__name__)

STAGING_DIR = "_bt_splits"   # below the snapshot: Spark's partitioned output, before each split is moved out


def parquet_options(row_group_size_mb: int) -> dict[str, str]:
    """The Parquet settings ``materialize_dataset`` puts in the Hadoop configuration for its write, as options of
    this write only: row groups of ``row_group_size_mb``, sizes checked from the third row, no summary files."""
    return {"parquet.block.size": str(row_group_size_mb * 1024 * 1024), "parquet.block.size.row.check.min": "3",
            "parquet.row-group.size.row.check.min": "3", "parquet.summary.metadata.level": "NONE",
            "parquet.summary.metadata.propagate-errors": "true"}


def write_petastorm_metadata(spark: SparkSession, url: str, schema) -> None:
    """``_common_metadata`` of the Parquet files at ``url`` as ``materialize_dataset`` writes it (Petastorm's
    pickled Unischema, then the row groups of each file as JSON), with Petastorm's own functions and dataset class
    (``compat.petastorm`` gives it one on pyarrow >= 15); the footers are read here on the driver instead of in a
    Spark job. The files are reached through fsspec (``core.paths.filesystem``: pyarrow.fs for hdfs://), as the
    snapshot's commit and the training loader reach them, never through Petastorm's own resolver, whose HDFS client
    (the legacy ``pyarrow.hdfs``) is gone from pyarrow >= 15. ``spark`` is not needed (kept for the callers)."""
    petastorm_compat.install()
    from petastorm import utils
    from petastorm.etl import dataset_metadata
    from pyarrow import parquet as pq

    fs, path = filesystem(url)
    path = path.rstrip("/")

    def legacy_dataset():  # pyarrow's legacy class (which takes fsspec file systems), or compat's on pyarrow >= 15
        return dataset_metadata.pq.ParquetDataset(path, filesystem=fs, validate_schema=False, use_legacy_dataset=True)

    with warnings.catch_warnings():  # petastorm 0.13 runs on pyarrow's deprecated legacy dataset API
        warnings.simplefilter("ignore", FutureWarning)
        dataset = legacy_dataset()
        utils.add_to_dataset_metadata(dataset, dataset_metadata.UNISCHEMA_KEY, pickle.dumps(schema))
        row_groups = {}
        for piece in dataset.pieces:  # materialize_dataset's order (the JSON keeps it)
            with fs.open(piece.path) as fh:
                row_groups[os.path.relpath(piece.path, dataset.paths)] = pq.read_metadata(fh).num_row_groups
        utils.add_to_dataset_metadata(dataset, dataset_metadata.ROW_GROUPS_PER_FILE_KEY, json.dumps(row_groups))
        dataset_metadata.load_row_groups(legacy_dataset())  # its check


def write_splits(spark: SparkSession, rows: DataFrame, *, groups: list[dict[str, Any]], output_url: str, schema,
                 label_names: list[str], row_group_size_mb: int, ranks: int, rejected_columns: list[str],
                 rejected_from: DataFrame | None = None) -> dict[str, Any]:
    """Write the accepted rows (``reason`` null) as one Petastorm dataset per split and the rest to ``rejected/``,
    picked out of ``rejected_from`` where given: the same records before a step only accepted rows need (Spark
    does not push the ``reason`` filter through a Python pass such as ``text.map_to_ids``, which would otherwise
    run again over every record to find the rejected ones: 0.9 s of a 9 s text run at 320,000 records).

    ``groups`` are ``rows`` counted by ``incremental.group_counts`` (``Outcomes.resolve``: per partition, split,
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
    rejected_url = join(output_url, layout.REJECTED_DIR)
    rejected = sum(g["rows"] for g in groups if g["category"] is not None)
    with without_adaptive(spark), _beside(spark, _rejected_job(
            spark, rows if rejected_from is None else rejected_from, rejected, rejected_columns, rejected_url)):
        _write_accepted(spark, kept, groups=accepted, rows_of=rows_of, files=files, output_url=output_url,
                        row_group_size_mb=row_group_size_mb)
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
    return summarise(groups, splits, output_url=output_url, rejected_url=rejected_url)


def _write_accepted(spark: SparkSession, kept: DataFrame, *, groups: list[dict[str, Any]], rows_of: dict[str, int],
                    files: dict[str, int], output_url: str, row_group_size_mb: int) -> None:
    """All splits of the accepted rows ``kept`` in one Spark job (``route``: ``files[s]`` near-equal row groups
    for split ``s``, from the accepted ``groups``' rows per partition), each split then moved to its folder; a
    split without rows is one file of the schema."""
    with spark_job(spark, "write", f"{sum(rows_of.values())} rows in {sum(files.values())} files -> {output_url}"):
        if any(rows_of.values()):
            counts: dict[tuple[int, str], int] = {}
            for g in groups:
                counts[(g["pid"], g["split"])] = counts.get((g["pid"], g["split"]), 0) + g["rows"]
            staging = join(output_url, STAGING_DIR)
            (route(kept, counts, {s: n for s, n in files.items() if n}).write.partitionBy("split")
             .options(**parquet_options(row_group_size_mb)).mode("overwrite").parquet(staging))
            _move_splits(staging, output_url, [s for s in layout.SPLITS if rows_of[s]])
        for split in (s for s in layout.SPLITS if not rows_of[s]):  # Spark writes one file: the schema, no rows
            kept.where(F.lit(False)).drop("split").write.options(**parquet_options(row_group_size_mb)) \
                .mode("overwrite").parquet(join(output_url, split))


def _rejected_job(spark: SparkSession, records: DataFrame, rejected: int, columns: list[str],
                  url: str) -> Callable[[], None] | None:
    """The Spark job that writes the ``rejected`` records of ``records`` to ``url`` (``write_rejected``), or
    None when none was rejected: no rejected/ folder then (the manifest says 0; nothing reads it)."""
    if not rejected:
        return None

    def job() -> None:
        with spark_job(spark, "rejected", f"{rejected} rejected records -> {url}"):
            write_rejected(records.where(F.col("reason").isNotNull()).select(*columns), url=url)

    return job


@contextlib.contextmanager
def _beside(spark: SparkSession, job: Callable[[], None] | None) -> Iterator[None]:
    """Run ``job`` in a thread of its own while the block runs (Spark runs the jobs of two threads side by side:
    its planning and its tasks fill the gaps of the block's job), waited for when the block ends; its error, if
    any, raised then, unless the block raised its own. Both are planned without adaptive query execution: the
    caller holds ``without_adaptive`` around the block, since the setting is the session's, not a thread's."""
    if job is None:
        yield
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failed.append(exc)

    if is_connect(spark):  # the job is the server's; this thread only waits for it
        thread = threading.Thread(target=run, name="bigtrain-rejected")
    else:  # a Python thread with a JVM thread of its own, which ends with it (its job group is its own)
        from pyspark import InheritableThread

        thread = InheritableThread(run)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


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
    """The rejected records as one file: the records are picked out by as many tasks as the rows have partitions,
    then shuffled to one (``coalesce(1)`` would have one task read every row to find them: 1.5 s of a 10 s
    text run at 80,000 records)."""
    df.repartition(1).write.mode("overwrite").parquet(url)


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
