"""Reading the preprocessing jobs' and batch inference's input in the Python workers.

The driver lists the input once (``pipelines.inputs.list_files``); ``files_frame`` makes the listed files a
DataFrame, and ``read_records`` reads and (with ``prepare``) parses their records in the same worker, so a record
has the same source (and sample id) in preprocessing and in prediction. ``detect_format`` tells a text input's
format from its extensions; ``spark_path`` escapes a dataset URL for Spark's readers.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pyspark
from pyspark.sql import DataFrame, SparkSession

from pipelines import inputs, text


_GLOB_CHARS = "\\*?[]{}"


def spark_path(url: str) -> str:
    """A URL as Spark's readers take it: Hadoop's glob characters (``[ ] { } * ? \\``) escaped, since a dataset
    folder named ``ds [v2]`` is a path, not a pattern."""
    return "".join("\\" + c if c in _GLOB_CHARS else c for c in url)


FILES_SCHEMA = "path string, relpath string, size long, problem string"


def files_frame(spark: SparkSession, entries: list) -> DataFrame:
    """The listed files to read (``pipelines.inputs.Entry``), one row each, for the Python workers to read."""
    import pyarrow as pa

    if int(pyspark.__version__.split(".")[0]) >= 4:  # an Arrow table: 64,000 files 0.06-0.09 s, tuples 0.22-0.28 s
        table = pa.table({"path": pa.array([e.path for e in entries], pa.string()),
                          "relpath": pa.array([e.relpath for e in entries], pa.string()),
                          "size": pa.array([e.size for e in entries], pa.int64()),
                          "problem": pa.array([e.problem for e in entries], pa.string())})
        return spark.createDataFrame(table)  # split in even parts over the session's cores, as a list is
    # PySpark 3.5 takes no Arrow table; verifySchema off: the tuples are built here to the schema
    return spark.createDataFrame([(e.path, e.relpath, e.size, e.problem) for e in entries], FILES_SCHEMA,
                                 verifySchema=False)


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
    list of such records, ``text.RawRecord`` -> an Arrow record batch of ``schema``, ``text.arrow_batch``), what it
    makes of them in the same worker (``mapInArrow``: no pandas frame on the way): records are never
    batched again between reading and parsing (Spark batches by rows, and 10,000 records of up to
    ``max_record_bytes`` each would not fit). Preprocessing and batch inference both read through this, so a
    record has the same source (and sample id) in both. MissingColumnError when the first readable Parquet file
    has no column of ``fields`` (a later one without it is a rejected file)."""
    if fmt == "parquet":
        _check_columns(entries, fields)

    def read(batches: Iterator) -> Iterator:
        for records in text.read_partition(listed_files(batches), fmt=fmt, fields=fields,
                                           max_record_bytes=max_record_bytes):
            yield prepare(records) if prepare is not None else text.records_batch(records)

    return files_frame(spark, entries).select("path", "relpath", "problem").mapInArrow(
        read, schema if prepare is not None else text.RECORD_SCHEMA)


def listed_files(batches: Iterator) -> Iterator[tuple[str, str, str | None]]:
    """(path, relpath, problem) of each file in Arrow record batches of ``files_frame``'s rows."""
    for batch in batches:
        yield from zip(*(batch.column(name).to_pylist() for name in ("path", "relpath", "problem")))


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
