"""The one module that owns Spark sessions, reading and writing for the preprocessing jobs and batch inference.

Spark jobs are named per kind (``spark_job``) so that a run's jobs can be counted (``jobs_by_kind``). All splits of
a snapshot are written by one Spark job (``partitionBy("split")``, each split then moved to ``<snapshot>/<split>/``):
rows are routed so that every split is a multiple of ``ranks`` files of one row group each, whose sizes differ by
at most one row (``route``, from the rows per input partition that ``incremental.group_counts`` counted, so the
routing needs no counting pass of its own). Petastorm's metadata (``_common_metadata`` with the pickled Unischema
and the row groups per file) is written on the driver from the files' footers with Petastorm's own functions: what
``materialize_dataset`` writes, without its Spark pass per split. The rejected table is written only when a record
was rejected.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import sys
import warnings
from typing import Any, Callable, Iterator

from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from compat import petastorm as petastorm_compat
from core.errors import DatasetError
from core.locales import effective_ctype, file_name_problem, jvm_locale_changes
from core.paths import filesystem, join
from dataset import layout
from pipelines import inputs, text

log = logging.getLogger(__name__)


def build_spark(*, app_name: str, master: str | None, conf: dict[str, Any] | None = None) -> SparkSession:
    """A SparkSession for a job. ``master=None`` leaves it to spark-submit (``--master`` on its command line).

    In local mode the Python workers must be this interpreter (the one with bigtrain installed), not whatever
    ``python3`` is first on PATH.
    """
    if not _jvm_started():  # the JVM inherits this process's environment: file names in UTF-8 whatever the locale
        changes = jvm_locale_changes(os.environ)
        if changes:
            log.info("starting Spark with %s: the locale %r would have it skip file names that are not ASCII",
                     ", ".join(f"{k}={v}" for k, v in changes.items()), effective_ctype(os.environ))
            os.environ.update(changes)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    if (master or "").startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    # petastorm 0.13 runs on pyarrow's deprecated legacy API in the Python workers too; its FutureWarnings there
    # would bury the job's own log.
    builder = builder.config("spark.executorEnv.PYTHONWARNINGS", "ignore::FutureWarning")
    # Spark's stage progress bar when a person watches (a terminal), not in logs that schedulers keep.
    builder = builder.config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("BIGTRAIN_SPARK_LOG_LEVEL", "WARN"))
    return spark


def local_names_problem(spark: SparkSession) -> str | None:
    """Why the driver's JVM cannot be trusted to name a local path beyond ASCII (None: it can): it names files in
    the encoding of the locale it started in. Only local file systems: HDFS and object stores name files in UTF-8."""
    return file_name_problem(spark.sparkContext._jvm.System.getProperty("sun.jnu.encoding"), os.environ)


def _jvm_started() -> bool:
    """A JVM runs already: spark-submit started this process, or a session exists."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._active_spark_context is not None


JOB_GROUP = "bigtrain:"  # + kind: the job group of every Spark job a preprocessing run launches
JOB_KINDS = ("aggregate", "vocabulary", "write", "rejected")


@contextlib.contextmanager
def spark_job(spark: SparkSession, kind: str, what: str) -> Iterator[None]:
    """Name the Spark jobs of the actions inside: job group ``bigtrain:<kind>`` (``jobs_by_kind`` counts them with
    Spark's status tracker), ``what`` their description in Spark's UI; the thread's earlier group comes back after.
    The actions are planned without adaptive query execution (``without_adaptive``)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"Spark job kind {kind!r} is not one of {', '.join(JOB_KINDS)}")
    sc = spark.sparkContext
    saved = {key: sc.getLocalProperty(key) for key in ("spark.jobGroup.id", "spark.job.description")}
    sc.setJobGroup(JOB_GROUP + kind, f"bigtrain {kind}: {what}")
    try:
        with without_adaptive(spark):
            yield
    finally:
        for key, value in saved.items():
            sc.setLocalProperty(key, value)


@contextlib.contextmanager
def without_adaptive(spark: SparkSession) -> Iterator[None]:
    """Plan the queries inside without adaptive query execution (the setting comes back after). AQE runs every
    shuffle stage as a Spark job of its own, and bigtrain's shuffles have a fixed partition count (one per row
    group written) or a handful of output rows (the aggregations, the lines per block), so it would add a job per
    shuffle and save nothing. A persisted DataFrame keeps the plan it was persisted with: ``persist``."""
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        yield
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", adaptive)


def persist(spark: SparkSession, df: DataFrame) -> DataFrame:
    """``df`` persisted (memory, then disk), planned ``without_adaptive`` like the actions that will fill it."""
    from pyspark import StorageLevel

    with without_adaptive(spark):
        return df.persist(StorageLevel.MEMORY_AND_DISK)


def jobs_by_kind(spark: SparkSession) -> dict[str, set[int]]:
    """The ids of the Spark jobs this session ran inside ``spark_job``, per kind, and (``"other"``) those outside
    any job group, as Spark's status tracker knows them (``spark.ui.retainedJobs``, 1000 by default)."""
    tracker = spark.sparkContext.statusTracker()
    found = {kind: set(tracker.getJobIdsForGroup(JOB_GROUP + kind)) for kind in JOB_KINDS}
    found["other"] = set(tracker.getJobIdsForGroup(None))
    return found


HADOOP_FILESYSTEMS = {  # URL scheme -> (Hadoop class, what provides it; {hadoop}: the version Spark runs)
    "s3a": ("org.apache.hadoop.fs.s3a.S3AFileSystem",
            "the Hadoop S3 connector: spark-submit --packages org.apache.hadoop:hadoop-aws:{hadoop}"),
    "gs": ("com.google.cloud.hadoop.fs.gcs.GoogleHadoopFileSystem", "the GCS connector jar"),
    "abfs": ("org.apache.hadoop.fs.azurebfs.AzureBlobFileSystem",
             "spark-submit --packages org.apache.hadoop:hadoop-azure:{hadoop}"),
}


class MissingConnectorError(ValueError):
    """Spark cannot reach a URL's storage: its Hadoop connector is not on the classpath."""


def require_connector(spark: SparkSession, url: str) -> None:
    """Fail before any work when Spark has no file system for ``url`` (s3a://, gs://, abfs://; s3:// is not one)."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme in ("s3", "s3n"):
        raise MissingConnectorError(f"{url}: Spark reaches object storage through s3a://, not {scheme}:// "
                                    f"(use s3a://{url.split('://', 1)[1]})")
    if scheme not in HADOOP_FILESYSTEMS:
        return
    class_name, provider = HADOOP_FILESYSTEMS[scheme]
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(class_name)
    except Exception:  # noqa: BLE001 - py4j wraps the ClassNotFoundException
        hadoop = spark.sparkContext._jvm.org.apache.hadoop.util.VersionInfo.getVersion()  # the connector must match
        raise MissingConnectorError(f"{url}: Spark has no {scheme}:// file system ({class_name} is not on the "
                                    f"classpath); add {provider.format(hadoop=hadoop)}") from None


_GLOB_CHARS = "\\*?[]{}"


def spark_path(url: str) -> str:
    """A URL as Spark's readers take it: Hadoop's glob characters (``[ ] { } * ? \\``) escaped, since a dataset
    folder named ``ds [v2]`` is a path, not a pattern."""
    return "".join("\\" + c if c in _GLOB_CHARS else c for c in url)


FILES_SCHEMA = "path string, relpath string, size long, problem string"


def files_frame(spark: SparkSession, entries: list) -> DataFrame:
    """The listed files to read (``pipelines.inputs.Entry``), one row each, for the Python workers to read."""
    return spark.createDataFrame([(e.path, e.relpath, e.size, e.problem) for e in entries], FILES_SCHEMA)


TEXT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def detect_format(input_url: str, given: str = "auto") -> str:
    """jsonl, csv or parquet: ``given``, or (``auto``) the one the extensions of the input file or of the files in
    the input folder say. A folder holds one format: files of two known formats are refused either way (read as
    one format, the others would be rejected line by line), naming which files are which."""
    import fsspec

    def kind(name: str) -> str | None:
        name = name[:-3] if name.endswith(".gz") else name
        return next((fmt for ext, fmt in TEXT_FORMATS.items() if name.endswith(ext)), None)

    try:
        fs, path = fsspec.core.url_to_fs(input_url)
    except (ImportError, ValueError):  # a store only Spark reaches (hdfs:// without libhdfs here): as given
        if given != "auto":
            return given
        raise
    if not fs.exists(path):
        raise FileNotFoundError(input_url)
    if not fs.isdir(path):
        names = [path]
    else:
        names = [p for p in fs.find(path) if not os.path.basename(p).startswith((".", "_"))][:10_000]
    by_kind: dict[str | None, list[str]] = {}
    for name in names:
        by_kind.setdefault(kind(name), []).append(name[len(path):].lstrip("/") or os.path.basename(name))
    known = sorted(k for k in by_kind if k)
    if len(known) > 1:
        which = "; ".join(f"{k}: {len(by_kind[k])} ({', '.join(by_kind[k][:3])}{', ...' if len(by_kind[k]) > 3 else ''})"
                          for k in known)
        raise ValueError(f"{input_url} holds files of {len(known)} formats ({which}); a folder holds one format: "
                         "give each format its own folder and run once per folder")
    if given != "auto":
        return given
    if not known:
        found = sorted({os.path.splitext(n)[1] or "(none)" for n in names})[:10]
        raise ValueError(f"cannot tell the format of {input_url} (extensions found: {', '.join(found) or 'no files'}); "
                         "pass --format jsonl|csv|parquet")
    return known[0]


def read_records(spark: SparkSession, entries: list, *, fmt: str, fields: list[str],
                 max_record_bytes: int | None = None, prepare: Callable[[Any], Any] | None = None,
                 schema=None) -> DataFrame:
    """RECORD_SCHEMA rows (``pipelines.text``: source, file_path, raw, broken, header) of every record of the listed
    files ``entries``, read by the Python workers (``text.file_records``): a line (JSON Lines), a CSV record (its
    header line is not one) or a Parquet row as a JSON object of ``fields``; or, with ``prepare`` (a function of a
    frame of such records -> a frame of ``schema``), what it makes of them in the same worker: records are never
    batched again between reading and parsing (Spark batches by rows, and 10,000 records of up to
    ``max_record_bytes`` each would not fit). Preprocessing and batch inference both read through this, so a
    record has the same source (and sample id) in both. MissingColumnError when the first readable Parquet file
    has no column of ``fields`` (a later one without it is a rejected file)."""
    if fmt == "parquet":
        _check_columns(entries, fields)

    def read(files: Iterator) -> Iterator:
        for frame in text.read_partition(files, fmt=fmt, fields=fields, max_record_bytes=max_record_bytes):
            yield prepare(frame) if prepare is not None else frame

    return files_frame(spark, entries).select("path", "relpath", "problem").mapInPandas(
        read, schema if prepare is not None else text.RECORD_SCHEMA)


def _check_columns(entries: list, fields: list[str]) -> None:
    """MissingColumnError when the first Parquet file that can be read has no column of ``fields`` (a file that
    cannot be read is the workers' reject, not a reason to fail the job here)."""
    for entry in entries:
        if entry.problem is not None or entry.size == 0:
            continue
        try:
            columns = inputs.parquet_columns(entry.path)
        except Exception:  # noqa: BLE001 - not Parquet, truncated, unreadable: rejected when read
            continue
        missing = [c for c in fields if c not in columns]
        if missing:
            raise MissingColumnError(f"{entry.path}: no column {missing[0]!r} (columns: {', '.join(columns)})")
        return


class MissingColumnError(ValueError):
    """A Parquet input has no column of a field the records are read with."""


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
                 label_names: list[str], row_group_size_mb: int, ranks: int,
                 rejected_columns: list[str]) -> dict[str, Any]:
    """Write the accepted rows (``reason`` null) as one Petastorm dataset per split and the rest to ``rejected/``.

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
