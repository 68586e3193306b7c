"""Spark sessions for the preprocessing jobs and batch inference, and the Spark jobs of a run named by kind.

``build_spark`` starts (or joins) the session with the locale and logging bigtrain needs, or connects to a Spark
Connect server (``remote``, or ``SPARK_REMOTE``); ``spark_job`` names the Spark jobs of a preprocessing run per kind
so that a run's jobs can be counted (``jobs_by_kind``); ``require_connector`` names the Hadoop connector an output
URL needs before any work; ``constant_map`` puts a driver-side mapping in a query as one literal.

Spark Connect: a Connect session has no ``sparkContext``, RDD or JVM gateway. The preprocessing and predict paths
use none of them there: the log level, the job groups, the status tracker, the connector check and the JVM's file
name encoding are the server's (skipped, ``is_connect``), and what the executors need from the driver (a
vocabulary, a checkpoint) travels in the Python functions' closures, not in broadcasts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import LaunchError
from core.locales import effective_ctype, file_name_problem, jvm_locale_changes

log = logging.getLogger(__name__)


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no sparkContext, RDD or JVM gateway)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


# The SQL settings of every bigtrain session, classic or Connect (a job's spark_conf comes after and may change them).
SESSION_SQL_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Spark (4.2 and later) looks a key up in a constant map through a hash from this many keys; below, it compares
    # the keys one after the other. The copies search's marks (``duplicates.apply``) are such a map, looked up for
    # every row by every job that reads them: 144 marks cost 0.2 s a scan of 320,000 records one by one, 0.08 s
    # hashed. Older Spark does not know the setting (it scans).
    "spark.sql.optimizer.mapLookupHashThreshold": "16",
}


def constant_map(mapping: dict, key_type: str, value_type: str) -> Column:
    """``mapping`` (keys of one type, values not null) as a map column of ``key_type`` to ``value_type`` (Spark SQL
    type names) that Spark's optimiser folds into one map literal: its keys and its values each travel as one JSON
    array. ``F.create_map`` of a ``F.lit`` per key and value is a call to the JVM apiece: 10,000 marks of the
    copies search took 9 s on the driver that way, 0.04-0.07 s this way (0.07-0.1 s with the optimiser's fold)."""
    keys, values = zip(*sorted(mapping.items())) if mapping else ((), ())
    return F.map_from_arrays(F.from_json(F.lit(json.dumps(list(keys))), f"array<{key_type}>"),
                             F.from_json(F.lit(json.dumps(list(values))), f"array<{value_type}>"))


def build_spark(*, app_name: str, master: str | None, conf: dict[str, Any] | None = None,
                remote: str | None = None) -> SparkSession:
    """A SparkSession for a job. ``master=None`` leaves it to spark-submit (``--master`` on its command line).
    ``remote``: a Spark Connect session on that server (``sc://host:port``) instead (``jobs.common.spark_target``
    decides between ``--master``, ``--remote`` and ``SPARK_REMOTE``; a classic session here ignores SPARK_REMOTE).

    In local mode the Python workers must be this interpreter (the one with bigtrain installed), not whatever
    ``python3`` is first on PATH.
    """
    if remote:
        return _connect(remote, app_name=app_name, conf=conf)
    os.environ.pop("SPARK_REMOTE", None)  # PySpark's builder would connect there instead of starting this master
    if not _jvm_started():  # the JVM inherits this process's environment: file names in UTF-8 whatever the locale
        changes = jvm_locale_changes(os.environ)
        if changes:
            log.info("starting Spark with %s: the locale %r would have it skip file names that are not ASCII",
                     ", ".join(f"{k}={v}" for k, v in changes.items()), effective_ctype(os.environ))
            os.environ.update(changes)
        quiet_jvm_logging(os.environ)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    if (master or "").startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        os.environ["PYSPARK_PYTHON"] = sys.executable
    for key, value in SESSION_SQL_CONF.items():
        builder = builder.config(key, value)
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


def _connect(url: str, *, app_name: str, conf: dict[str, Any] | None) -> SparkSession:
    """A Spark Connect session on ``url``. The settings a job gives are runtime SQL settings of the session; a
    server's static settings (executor environment, console progress) are the server's own."""
    # PySpark's own builder (not pyspark.sql.connect's): it marks the process as a Connect client, which
    # pyspark.sql.functions needs to build Connect columns. It needs grpcio, grpcio-status, googleapis-common-protos
    # and zstandard (requirements/runtime.txt).
    try:
        import grpc  # noqa: F401 - the first of the Connect client's packages PySpark imports
        import zstandard  # noqa: F401
    except ImportError as exc:
        raise LaunchError(f"--remote {url}: this Python has no Spark Connect client ({exc.name} is not "
                                    "installed; requirements/runtime.txt pins grpcio, grpcio-status, "
                                    "googleapis-common-protos and zstandard)") from None
    builder = SparkSession.builder.remote(url)
    for key, value in {**SESSION_SQL_CONF, **(conf or {})}.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    log.info("%s on the Spark Connect server %s (Spark %s)", app_name, url, spark.version)
    return spark


def share(spark: SparkSession, value: Any) -> Any:
    """``value`` for the executors' functions: a broadcast on a classic session (sent once per executor), the value
    itself on a Connect session, which has no broadcasts: it travels in the pickled function (a vocabulary, a
    checkpoint of a few MB; the server's ``spark.connect.grpc.maxInboundMessageSize``, 128 MiB by default, bounds it).
    The functions take either (``getattr(shared, "value", shared)``)."""
    if is_connect(spark):
        return value
    return spark.sparkContext.broadcast(value)


# Spark's log4j set to warnings (conf/log4j2.properties, in a checkout or an installed tree; not in the dist zip).
LOG4J_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "log4j2.properties"


def quiet_jvm_logging(environ) -> None:
    """A JVM that this process starts (a ``bigtrain`` command, ``python jobs/...``) logs warnings only, as the
    Makefile targets have it (``SPARK_SUBMIT_OPTS``): Spark's default prints its start-up at INFO. A log4j
    configuration the user chose in ``SPARK_SUBMIT_OPTS`` is kept."""
    options = environ.get("SPARK_SUBMIT_OPTS", "")
    if "log4j2.configurationFile" not in options and LOG4J_CONFIG.is_file():
        environ["SPARK_SUBMIT_OPTS"] = f"{options} -Dlog4j2.configurationFile=file:{LOG4J_CONFIG}".strip()


def local_names_problem(spark: SparkSession) -> str | None:
    """Why the driver's JVM cannot be trusted to name a local path beyond ASCII (None: it can): it names files in
    the encoding of the locale it started in. Only local file systems: HDFS and object stores name files in UTF-8.
    A Connect server's JVM is not this process's: the job's own arguments reach it in UTF-8 (None)."""
    if is_connect(spark):
        return None
    return file_name_problem(spark.sparkContext._jvm.System.getProperty("sun.jnu.encoding"), os.environ)


def _jvm_started() -> bool:
    """A JVM runs already: spark-submit started this process, or a session exists."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or SparkContext._active_spark_context is not None


JOB_GROUP = "bigtrain:"  # + kind: the job group of every Spark job a preprocessing run launches
JOB_KINDS = ("duplicates", "aggregate", "vocabulary", "write", "rejected")


@contextlib.contextmanager
def spark_job(spark: SparkSession, kind: str, what: str) -> Iterator[None]:
    """Name the Spark jobs of the actions inside: job group ``bigtrain:<kind>`` (``jobs_by_kind`` counts them with
    Spark's status tracker), ``what`` their description in Spark's UI; the thread's earlier group comes back after.
    The actions are planned without adaptive query execution (``without_adaptive``)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"Spark job kind {kind!r} is not one of {', '.join(JOB_KINDS)}")
    if is_connect(spark):  # no job groups there (its jobs are tagged by the server); the plan is what matters
        with without_adaptive(spark):
            yield
        return
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
    any job group, as Spark's status tracker knows them (``spark.ui.retainedJobs``, 1000 by default). Classic
    sessions only: a Connect client has no status tracker."""
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
    if scheme not in HADOOP_FILESYSTEMS or is_connect(spark):  # a Connect server's classpath is not visible here:
        return  # its write fails with the server's error
    class_name, provider = HADOOP_FILESYSTEMS[scheme]
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(class_name)
    except Exception:  # noqa: BLE001 - py4j wraps the ClassNotFoundException
        hadoop = spark.sparkContext._jvm.org.apache.hadoop.util.VersionInfo.getVersion()  # the connector must match
        raise MissingConnectorError(f"{url}: Spark has no {scheme}:// file system ({class_name} is not on the "
                                    f"classpath); add {provider.format(hadoop=hadoop)}") from None
