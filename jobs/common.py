"""Helpers every job entry point shares: logging, the config flags, and a clean exit on user errors."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import signal
import sys
import time
from typing import Callable

from core import locking
from core.config import read_defaults
from core.logs import counted
from core.paths import filesystem
from dataset import layout
from training import outputs
from core.errors import (EXIT_INTERRUPTED, EXIT_OK, EXIT_REJECTS, EXIT_REMOVALS, BigtrainError, ConfigError,
                         LaunchError, UsageError)


def add_config_flags(parser: argparse.ArgumentParser, section: str) -> None:
    """--config and --set, and each flag's default from ``section`` of the committed defaults in its help (a flag
    left out takes the config's value, so argparse's own default is None and would show nothing)."""
    defaults = read_defaults().get(section, {})
    for action in parser._actions:
        if not action.help or action.default is not None or "default" in action.help or action.dest not in defaults:
            continue
        value = defaults[action.dest]
        shown = "none" if value in (None, "", [], {}) else str(value).lower() if isinstance(value, bool) else value
        action.help += f" (default: {shown})"
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE", help="YAML file layered over conf/bigtrain.yaml")
    group.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                       help="override one key of this command's config section (named below), as SECTION.KEY=VALUE; "
                            "repeatable; a key of another section is an error")


def add_snapshot_flags(parser: argparse.ArgumentParser, section: str) -> None:
    group = parser.add_argument_group("snapshots")
    group.add_argument("--mode", choices=("incremental", "overwrite", "error"),
                       help="incremental (default): process only new or changed input files, or nothing when none "
                            "changed; overwrite: process every input again; error: refuse when the dataset exists")
    group.add_argument("--max-reject-fraction", type=float, metavar="F",
                       help=f"fail (exit {EXIT_REJECTS}, nothing committed) when more than this fraction of the "
                            f"run's input is rejected (default: {section}.max_reject_fraction)")
    group.add_argument("--duplicates", choices=("reject", "keep", "ignore"),
                       help="records whose prepared content is the same (images: pixels; texts: normalised text): "
                            "reject every copy after the first of one class and every copy under different classes, "
                            "keep them (counted, each group in one split), or do not look "
                            f"(default: {section}.duplicates; docs/guide.md, 'Copies of one content')")
    group.add_argument("--allow-removals", action="store_true",
                       help=f"commit an incremental run that removes more than {section}.max_removed_fraction of the "
                            "previous snapshot's input files, or (images) every file of a class folder (without "
                            f"it: exit {EXIT_REMOVALS}, nothing committed; an input that lists no files is refused "
                            "either way)")
    group.add_argument("--strict", action="store_true",
                       help=f"refuse (exit {EXIT_REMOVALS}, nothing committed) a snapshot with a class that the train "
                            f"split has no row of, which is otherwise a warning (default: false; config {section}.strict)")


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


# Where a launcher gives this process its rank: horovodrun (HOROVOD_RANK), mpirun (OMPI_COMM_WORLD_RANK, PMI_RANK),
# torchrun (RANK, beside its TORCHELASTIC_RUN_ID).
RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launcher_rank(environ=os.environ) -> int | None:
    """This process's rank when a launcher (horovodrun, mpirun, torchrun) started it, else None."""
    names = RANK_VARIABLES + (("RANK",) if "TORCHELASTIC_RUN_ID" in environ else ())
    for name in names:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    return None


SAME_ON_EVERY_RANK = (UsageError, ConfigError)  # the command line and config: every rank reads the same


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_main(body: Callable[[], int], *, on_interrupt: str = "", sigterm_interrupts: bool = False) -> int:
    """Run a job body. A BigtrainError ends in one clear line and its exit code (core.errors: 2 configuration,
    usage and launch errors; 1 a dataset missing, incomplete or read short, a checkpoint altered or foreign, a
    lost peer; 3 more rejected input than max_reject_fraction allows, nothing committed; 6 input files removed
    beyond max_removed_fraction or a whole class, no input, no row or one class, nothing committed; 75 a lock held
    by another run; 130 Ctrl-C, with ``on_interrupt`` saying what the user can do next). A reader of the output
    that went away (``| head``) ends the command quietly. Anything else keeps its traceback. SIGINT and SIGTERM are
    unblocked first: a process started with them blocked (a signal mask is inherited; it was seen from a test
    runner under Python 3.12) would otherwise never see Ctrl-C or a scheduler's stop.

    Under a launcher every rank runs this: a flag or config error, which every rank meets alike, and the interrupt
    line are printed by rank 0 only; any other error by the rank that met it. With
    ``sigterm_interrupts`` SIGTERM stops the body as Ctrl-C does: horovodrun and torchrun pass a Ctrl-C on to
    their ranks, and a scheduler stops a job, with SIGTERM."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sigterm_interrupts:
        signal.signal(signal.SIGTERM, _interrupt)
    rank = launcher_rank()
    try:
        return body()
    except BigtrainError as exc:
        if rank in (None, 0) or not isinstance(exc, SAME_ON_EVERY_RANK):
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if rank in (None, 0):
            print(f"\ninterrupted{': ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Python would print another BrokenPipeError when it flushes stdout at exit; point stdout at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def format_summary(summary: dict, *, job: str, unit: str) -> str:
    """The closing summary of a preprocessing job: read = written + rejected, per split and class, rejects by reason."""
    if summary.get("unchanged"):
        return (f"{job}: nothing to do: {summary['inputs']} input files and the config are unchanged since snapshot "
                f"{summary['snapshot']} ({summary['rows_written']} rows, {summary['rejected']} rejected)\n"
                f"  output: {summary['output']}")
    read, rejected = summary["processed"]
    # An incremental run carries the rows of unchanged inputs over: the totals are the snapshot's, not this run's.
    carried = summary["records_read"] - read
    totals = f"{summary['records_read']} {unit} read" if not carried else \
        f"{summary['records_read']} {unit} in the snapshot ({read} read by this run, {carried} carried over)"
    lines = [f"{job}: {totals} = {summary['rows_written']} rows written + {summary['rejected']} rejected "
             f"({summary['seconds']}s)",
             f"  output: {summary['output']}",
             f"  snapshot {summary['snapshot']}: {summary['run']}; this run read {counted(read, unit[:-1])}, "
             f"rejected {rejected}"]
    for split, info in summary["splits"].items():
        per_class = ", ".join(f"{name}={n}" for name, n in info["per_class"].items())
        lines.append(f"  {split:<10} {info['rows']:>8} rows in {info['row_groups']} row groups  [{per_class}]")
    if summary["rejected"]:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in summary["rejected_by_reason"].items())
        lines.append(f"  rejected   {summary['rejected']:>8} {unit} -> {summary['rejected_url']}: {reasons}")
    copies = summary.get("duplicates")
    if copies:
        near = (f"; {copies['near_groups']} groups of near copies ({copies['near_rows']} rows), each in one split"
                if copies.get("near_groups") is not None else "")
        lines.append(f"  copies     {copies['groups']:>8} contents held by more than one {unit[:-1]}: "
                     f"{copies['duplicates']} duplicates, {copies['conflicting']} under conflicting labels, "
                     f"{copies['rejected']} rejected (duplicates: {copies['mode']}){near}")
    lines.extend(f"  warning: {gap}" for gap in class_gaps(summary["splits"]))
    return "\n".join(lines)


def class_gaps(splits: dict[str, dict]) -> list[str]:
    """A line for the classes of the label map the train split has no row of (a label fixed in ``labels`` that
    never occurs, a class whose files were removed), and one per split (validation, test) that lacks classes the
    train split has: their accuracy is then unmeasured, and a class with a single row (a label that sneaked in)
    shows here first."""
    per_class = splits.get("train", {}).get("per_class", {})
    trained = [name for name, n in per_class.items() if n]
    untrained = [name for name, n in per_class.items() if not n]
    gaps = [f"train has no rows of {len(untrained)} of the {len(per_class)} classes: "
            f"{', '.join(untrained[:10])}{', ...' if len(untrained) > 10 else ''} (a model never learns them)"
            ] if untrained else []
    for split in ("validation", "test"):
        missing = [name for name in trained if not splits.get(split, {}).get("per_class", {}).get(name)]
        if missing:
            gaps.append(f"{split} has no rows of {len(missing)} of the {len(trained)} classes in train: "
                        f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}")
    return gaps


class ArgumentParser(argparse.ArgumentParser):
    """Every bigtrain command's parser: argparse's, without abbreviated flags (``--epoch`` would be taken for
    ``--epochs``, on the command line and in a pipeline stage) and with ``(did you mean --epochs?)`` after an
    unknown flag. Its sub-parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        super().error(message + closest_flag(message, self))


def closest_flag(message: str, parser: argparse.ArgumentParser) -> str:
    """argparse suggests nothing for an unknown flag: `` (did you mean --max-length?)`` for the first one that has
    a close known flag, else nothing."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    known = _flags(parser)
    for word in message.split(":", 1)[1].split():
        close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1) if word.startswith("--") else []
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            flags += [flag for sub in action.choices.values() for flag in _flags(sub)]
    return sorted(set(flags))


def resolve_master(flag: str | None, config_master: str) -> str | None:
    """Explicit --master wins; else spark-submit's own --master (None: leave it); else the config default."""
    if flag:
        return flag
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # launched by spark-submit, which already chose the master
        return None
    return config_master


def add_remote_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", metavar="sc://HOST:PORT",
                        help="run on a Spark Connect server instead of a Spark master (default: SPARK_REMOTE when "
                             "set). Its executors need bigtrain and its stack installed; the driver side here needs "
                             "no Java")


def spark_target(args: argparse.Namespace, config_master: str) -> tuple[str | None, str | None]:
    """(master, remote) for ``build_spark``: --master and --remote exclude each other; --remote (or SPARK_REMOTE)
    runs on a Spark Connect server."""
    remote = getattr(args, "remote", None)
    if remote and args.master:
        raise UsageError(f"--remote {remote} and --master {args.master}: give one (--remote is a Spark Connect "
                         "server, --master a classic Spark master)")
    if remote and not remote.startswith(("sc://", "local")):
        raise UsageError(f"--remote {remote}: expected a Spark Connect URL, sc://HOST:PORT")
    if remote or (os.environ.get("SPARK_REMOTE") and not args.master):
        return None, remote or os.environ["SPARK_REMOTE"]
    return resolve_master(args.master, config_master), None


def check_connectors(spark, urls: dict[str, str]) -> None:
    """A UsageError naming the flag when Spark cannot reach an --output (missing Hadoop connector), or when a local
    path beyond ASCII went through a JVM that cannot name it (a non-UTF-8 locale: spark-submit passes such a path
    on with "?" for those letters, and Spark would write it so). The files below --input are listed and read in
    Python (``check_storage``), whatever the locale and whatever Hadoop connectors Spark has."""
    from pipelines import session  # pyspark

    for flag, url in urls.items():
        try:
            if flag != "--input":
                session.require_connector(spark, url)
        except session.MissingConnectorError as exc:
            raise UsageError(f"{flag} {exc}") from None
        # Under spark-submit an ASCII JVM has already turned each letter beyond ASCII of the command line into "?"
        beyond_ascii = url.startswith("file:") and (not url.isascii() or "?" in url)
        problem = session.local_names_problem(spark) if beyond_ascii else None
        if problem:
            raise LaunchError(f"{flag} {url}: {problem}")


HDFS_CLIENT = ("for hdfs:// the driver needs pyarrow's HDFS client: JAVA_HOME, libhdfs.so (under HADOOP_HOME, or "
               "ARROW_LIBHDFS_DIR) and CLASSPATH=$(hadoop classpath --glob)")


def check_storage(url: str, *, flag: str) -> None:
    """A UsageError naming the scheme and what is missing, before any Spark work, when bigtrain's own file access
    cannot reach ``url``: the input files are listed and read through fsspec (by the driver and every executor);
    of an output, Spark writes the rows, but Petastorm's metadata, the staging marker and the manifest go through
    fsspec (pyarrow.fs for hdfs://), which would otherwise fail only after the whole Spark write."""
    try:
        filesystem(url)
    except Exception as exc:  # noqa: BLE001 - ImportError (no package for the scheme), ValueError, OSError (no libhdfs)
        scheme = url.split("://", 1)[0]
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = f"; {HDFS_CLIENT}" if scheme in ("hdfs", "viewfs") else ""
        what = ("lists and reads the input files" if flag == "--input"
                else "writes a dataset's metadata and manifest")
        raise UsageError(f"{flag} {url}: bigtrain {what} through fsspec, which cannot reach {scheme}:// here "
                         f"({cause}){hint}") from None


def dataset_lock(output_url: str):
    """One writer at a time for a local dataset folder (its .bigtrain.lock); other storage relies on the pipeline
    runner's lock (object stores have no flock)."""
    if not output_url.startswith("file://"):
        return contextlib.nullcontext()
    folder = output_url[len("file://"):]
    return locking.hold(os.path.join(folder, ".bigtrain.lock"), what=f"a job writing {output_url}", remove=True)


APART_ADVICE = ("keep the dataset folder and the input apart, neither inside the other (the next run would read the "
                "dataset's own files as input)")


def check_apart(input_url: str, output_url: str, *, input_flag: str = "--input", advice: str = APART_ADVICE) -> None:
    """A UsageError naming both flags when the output is the input or one lies inside the other: a dataset written
    inside its input is read back as input by the next run (``advice`` says why for other outputs)."""
    source, target = _as_folder(input_url), _as_folder(output_url)
    if source == target:
        relation = "is the same folder as"
    elif target.startswith(source):
        relation = "is inside"
    elif source.startswith(target):
        relation = "contains"
    else:
        return
    raise UsageError(f"--output {output_url} {relation} {input_flag} {input_url}: {advice}")


def _as_folder(url: str) -> str:
    if url.startswith("file://"):  # symlinks and .. resolved, so two spellings of one folder compare equal
        url = "file://" + os.path.realpath(url[len("file://"):])
    return url.rstrip("/") + "/"


# What a folder holds, by the names its writer leaves there (tests/jobs/test_outputs.py checks them against the
# writers): one command's output is never written into another's.
OUTPUT_MARKERS = {
    "bigtrain dataset": (layout.SNAPSHOTS_DIR, layout.METADATA_FILE),
    "training output": (outputs.CHECKPOINT_FILE, outputs.METRICS_FILE, outputs.RESUME_DIR),
    "prediction output": (outputs.PREDICT_SUMMARY_FILE,),
}


def check_output_kind(output_url: str, *, writes: str, flag: str = "--output") -> None:
    """A UsageError naming the flag and what is there when ``output_url`` holds another command's output (a model
    folder given to a preprocessing job, a dataset given to training, ...); ``writes`` is what this command writes,
    a key of OUTPUT_MARKERS."""
    fs, path = filesystem(output_url)
    if not layout.exists(fs, path, output_url) or not fs.isdir(path):
        return
    if writes == "bigtrain dataset" and fs.exists(path.rstrip("/") + "/" + layout.METADATA_FILE):
        raise UsageError(f"{flag} {output_url} is a snapshot of a dataset (it holds {layout.METADATA_FILE}); give the "
                         f"dataset folder ({output_url.split('/' + layout.SNAPSHOTS_DIR + '/')[0]}) or another folder")
    for kind, names in OUTPUT_MARKERS.items():
        found = [name for name in names if fs.exists(path.rstrip("/") + "/" + name)]
        if kind != writes and found:
            raise UsageError(f"{flag} {output_url} holds a {kind} ({found[0]} is there); this command writes a "
                             f"{writes}: give another folder")


def check_exists(url: str, *, flag: str, what: str) -> None:
    """A UsageError (exit 2: the command line names something that is not there) when nothing is at ``url``;
    something there that is damaged or incomplete is the data's failure (exit 1), told by the reader."""
    fs, path = filesystem(url)
    if not layout.exists(fs, path, url):
        raise UsageError(f"{flag} {url}: no such {what}")


def run_preprocessing(*, job: str, unit: str, master: str | None, spark_conf: dict[str, str], input_url: str,
                      output_url: str, body: Callable[..., dict], remote: str | None = None) -> int:
    """The shared life of a preprocessing job: input and output kept apart, a session, the storage checks,
    ``body(spark)`` timed, the session stopped whatever happens, and the summary printed (read = written +
    rejected)."""
    from pipelines import session  # pyspark

    check_apart(input_url, output_url)
    check_storage(input_url, flag="--input")
    check_storage(output_url, flag="--output")
    local = output_url.startswith("file://")
    if local:  # before anything is written there, the lock included
        check_output_kind(output_url, writes="bigtrain dataset")
    with dataset_lock(output_url):
        spark = session.build_spark(app_name=f"bigtrain-{job}", master=master, conf=spark_conf, remote=remote)
        try:
            check_connectors(spark, {"--input": input_url, "--output": output_url})
            if not local:  # object storage: once Spark's connector is known to be there (its error names it)
                check_output_kind(output_url, writes="bigtrain dataset")
            start = time.monotonic()
            summary = body(spark)
            summary["seconds"] = round(time.monotonic() - start, 1)
        finally:
            spark.stop()
    print(format_summary(summary, job=job, unit=unit))
    return EXIT_OK
