"""Helpers every job entry point shares: logging, the config flags, and a clean exit on user errors."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable

from jobs.config import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUR_LOGGERS = ("bigtrain", "pipelines", "training", "jobs", "benchmarks")


class UsageError(ValueError):
    """A command-line value is wrong; the message names the flag."""


# Exit codes a scheduler can act on (README "Production").
EXIT_OK = 0            # done, or nothing to do
EXIT_FAILED = 1        # a dataset is missing, damaged or refused; a stage failed
EXIT_USAGE = 2         # a flag, config key or pipeline file is wrong
EXIT_REJECTS = 3       # more input rejected than max_reject_fraction allows: nothing committed
EXIT_LOCKED = 75       # another run holds the lock (EX_TEMPFAIL: try again later)


def setup_logging(*, quiet: bool = False, rank: int = 0) -> None:
    """INFO on rank 0, WARNING elsewhere, so a multi-process run prints one story."""
    level = logging.WARNING if (quiet or rank != 0) else logging.INFO
    prefix = "" if rank == 0 else f"[rank {rank}] "
    # Libraries log at WARNING; bigtrain's own loggers at `level` (py4j reports its retried connections at INFO).
    logging.basicConfig(level=logging.WARNING, format=prefix + LOG_FORMAT, stream=sys.stderr, force=True)
    for ours in OUR_LOGGERS:
        logging.getLogger(ours).setLevel(level)
    # petastorm 0.13 uses pyarrow's legacy dataset API (STACK.md pins pyarrow 14 for it); its deprecation
    # warnings say nothing a bigtrain user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm(\.|$)")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE", help="YAML file layered over conf/bigtrain.yaml")
    group.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                       help="override one config key, e.g. --set train.momentum=0.8 (repeatable)")


def add_snapshot_flags(parser: argparse.ArgumentParser, section: str) -> None:
    group = parser.add_argument_group("snapshots")
    group.add_argument("--mode", choices=("incremental", "overwrite", "error"),
                       help="incremental (default): process only new or changed input files, or nothing when none "
                            "changed; overwrite: process every input again; error: refuse when the dataset exists")
    group.add_argument("--max-reject-fraction", type=float, metavar="F",
                       help=f"fail (exit {EXIT_REJECTS}, nothing committed) when more than this fraction of the "
                            f"run's input is rejected (default: {section}.max_reject_fraction)")


def positive_int(flag: str, *, allow_zero: bool = False) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number, got {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{flag} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
        return value
    return parse


def positive_float(flag: str, *, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not (value > 0 or (allow_zero and value == 0)):
            raise argparse.ArgumentTypeError(f"{flag} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
        return value
    return parse


def run_main(body: Callable[[], int]) -> int:
    """Run a job body. Configuration and usage errors end in one clear line and exit code 2; a dataset that is
    missing, incomplete or read short, or a checkpoint that is altered or foreign, ends in one clear line and exit
    code 1; more rejected input than max_reject_fraction allows in 3 (nothing committed), a lock held by another
    run in 75. Anything else keeps its traceback."""
    from pipelines.layout import DatasetError
    from pipelines.locking import LockHeld
    from pipelines.snapshots import RejectBudgetError
    from training.checkpoint import CheckpointError
    from training.errors import LaunchError, PeerLostError

    try:
        return body()
    except (ConfigError, UsageError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LockHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (DatasetError, CheckpointError, PeerLostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REJECTS if isinstance(exc, RejectBudgetError) else EXIT_FAILED


def format_summary(summary: dict, *, job: str, unit: str) -> str:
    """The closing summary of a preprocessing job: read = written + rejected, per split and class, rejects by reason."""
    if summary.get("unchanged"):
        return (f"{job}: nothing to do: {summary['inputs']} input files and the config are unchanged since snapshot "
                f"{summary['snapshot']} ({summary['rows_written']} rows, {summary['rejected']} rejected)\n"
                f"  output: {summary['output']}")
    lines = [f"{job}: {summary['records_read']} {unit} read = {summary['rows_written']} rows written "
             f"+ {summary['rejected']} rejected ({summary['seconds']}s)",
             f"  output: {summary['output']}",
             f"  snapshot {summary['snapshot']}: {summary['run']}; this run read {summary['processed'][0]} {unit}, "
             f"rejected {summary['processed'][1]}"]
    for split, info in summary["splits"].items():
        per_class = ", ".join(f"{name}={n}" for name, n in info["per_class"].items())
        lines.append(f"  {split:<10} {info['rows']:>8} rows in {info['row_groups']} row groups  [{per_class}]")
    if summary["rejected"]:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in summary["rejected_by_reason"].items())
        lines.append(f"  rejected   {summary['rejected']:>8} {unit} -> {summary['rejected_url']}: {reasons}")
    return "\n".join(lines)


def resolve_master(flag: str | None, config_master: str) -> str | None:
    """Explicit --master wins; else spark-submit's own --master (None: leave it); else the config default."""
    if flag:
        return flag
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # launched by spark-submit, which already chose the master
        return None
    return config_master


def check_connectors(spark, urls: dict[str, str]) -> None:
    """A UsageError naming the flag when Spark cannot reach one of the URLs (missing Hadoop connector)."""
    from pipelines import storage

    for flag, url in urls.items():
        try:
            storage.require_connector(spark, url)
        except storage.MissingConnectorError as exc:
            raise UsageError(f"{flag} {exc}") from None


def dataset_lock(output_url: str):
    """One writer at a time for a local dataset folder (its .bigtrain.lock); other storage relies on the pipeline
    runner's lock (object stores have no flock)."""
    import contextlib

    from pipelines import locking

    if not output_url.startswith("file://"):
        return contextlib.nullcontext()
    folder = output_url[len("file://"):]
    return locking.hold(os.path.join(folder, ".bigtrain.lock"), what=f"a job writing {output_url}")


def check_apart(input_url: str, output_url: str) -> None:
    """A UsageError naming both flags when the output is the input or one lies inside the other: a dataset written
    inside its input is read back as input by the next run."""
    source, target = _as_folder(input_url), _as_folder(output_url)
    if source == target:
        relation = "is the same folder as"
    elif target.startswith(source):
        relation = "is inside"
    elif source.startswith(target):
        relation = "contains"
    else:
        return
    raise UsageError(f"--output {output_url} {relation} --input {input_url}: keep the dataset folder and the input "
                     "apart, neither inside the other (the next run would read the dataset's own files as input)")


def _as_folder(url: str) -> str:
    if url.startswith("file://"):  # symlinks and .. resolved, so two spellings of one folder compare equal
        url = "file://" + os.path.realpath(url[len("file://"):])
    return url.rstrip("/") + "/"


def run_preprocessing(*, job: str, unit: str, master: str | None, spark_conf: dict[str, str], input_url: str,
                      output_url: str, body: Callable[..., dict]) -> int:
    """The shared life of a preprocessing job: input and output kept apart, a session, the storage checks,
    ``body(spark)`` timed, the session stopped whatever happens, and the summary printed (read = written +
    rejected)."""
    import time

    from pipelines import storage

    check_apart(input_url, output_url)
    with dataset_lock(output_url):
        spark = storage.build_spark(app_name=f"bigtrain-{job}", master=master, conf=spark_conf)
        try:
            check_connectors(spark, {"--input": input_url, "--output": output_url})
            start = time.monotonic()
            summary = body(spark)
            summary["seconds"] = round(time.monotonic() - start, 1)
        finally:
            spark.stop()
    print(format_summary(summary, job=job, unit=unit))
    return 0
