"""The on-disk layout of a bigtrain dataset, shared by the Spark jobs and the training loader (no Spark import).

A dataset is a folder of immutable snapshots; each job run writes a new one and commits it by writing its
``metadata.json`` (the manifest) last. The dataset's current snapshot is its newest committed one.

    <dataset>/snapshots/<id>/metadata.json   the manifest: snapshot id and parent, kind, class map, image shape or
                                             vocabulary, rows per split and class, every file with its rows, size
                                             and sha256, schema fingerprints, input files consumed, config, version
    <dataset>/snapshots/<id>/train/          a Petastorm dataset (Parquet + _common_metadata holding the Unischema)
    <dataset>/snapshots/<id>/validation/
    <dataset>/snapshots/<id>/test/
    <dataset>/snapshots/<id>/rejected/       Parquet: every input record that was not used, with its path and reason
    <dataset>/snapshots/<id>/vocab.json      sequence datasets: the tokens in id order (0 padding, 1 unknown)
    <dataset>/snapshots/<id>/inputs.parquet  the input files the snapshot holds (path, size, modification time)

Only folders named like bigtrain's ids (``SNAPSHOT_ID``: ``<6-digit sequence>-<UTC time>``) are snapshots; any other
folder under ``snapshots/`` (a user's ``pinned-for-paper/`` copy) is foreign: never read, never current, never
removed. A snapshot folder without metadata.json is uncommitted (being written, or left by a job that died; the
job's staging marker ``.bigtrain-staging`` says who wrote it), and so is one whose metadata.json is not a JSON
object (truncated or damaged): no reader opens either. Readers take either the dataset folder (its current
snapshot) or one snapshot folder (pinned).

Staging markers (JSON: host, pid, the pid's boot and namespace, process start, time begun) tell a later run whether
an uncommitted folder is provably abandoned (``abandoned``): for a writer of this host, by whether its process is
gone; for any other, by the marker being older than ``BIGTRAIN_STAGING_MAX_AGE_HOURS`` hours (default 24, by the
writer's clock: set it above the longest job, and mind clock skew between hosts).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass

from core import atomic
from core.errors import DatasetError
from core.paths import filesystem, join, to_url

METADATA_FILE = "metadata.json"
VOCAB_FILE = "vocab.json"
REJECTED_DIR = "rejected"
SNAPSHOTS_DIR = "snapshots"
INPUTS_FILE = "inputs.parquet"
FORMAT_VERSION = 2
SPLITS = ("train", "validation", "test")  # every dataset has these three, in this order (a split may be empty)
SNAPSHOT_ID = re.compile(r"^(\d{6})-\d{8}T\d{6}Z$")  # <sequence>-<UTC time>: the only names that are snapshots
STAGING_MARKER = ".bigtrain-staging"  # written by snapshots.begin in each staging folder (hidden: no manifest lists it)
STAGING_MAX_AGE_HOURS = 24.0  # default of BIGTRAIN_STAGING_MAX_AGE_HOURS: another host's staging folder older is abandoned
# A snapshot being removed (``datasets gc``): on a local disk renamed to snapshots/.removing-<id> first (hidden: never
# listed); elsewhere marked with .bigtrain-removing, then its metadata.json deleted first (uncommitted from then on)
REMOVING_PREFIX = ".removing-"
REMOVAL_MARKER = ".bigtrain-removing"

log = logging.getLogger(__name__)
_warned: set[str] = set()  # what was already warned about in this process (listings are repeated in one run)


def validate_fractions(fractions: dict[str, float], key: str = "splits") -> None:
    """Split fractions: one for each of SPLITS, each in [0, 1], adding up to 1, train above 0."""
    if set(fractions) != set(SPLITS):
        raise ValueError(f"{key}: expected fractions for exactly {', '.join(SPLITS)}, got {', '.join(sorted(fractions))}")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key}.{name}: fraction {value} is outside [0, 1]")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"{key}: fractions must add up to 1, got {sum(fractions.values()):.6f}")
    if fractions["train"] == 0.0:
        raise ValueError(f"{key}.train: the train fraction must be above 0")


def write_vocabulary(snapshot_url: str, vocabulary: list[str]) -> None:
    atomic.write_json(join(snapshot_url, VOCAB_FILE), vocabulary, sort_keys=False)


def read_vocabulary(dataset_url: str) -> list[str]:
    url = join(dataset_url, VOCAB_FILE)
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise DatasetError(f"{url} not found: a sequence dataset keeps its vocabulary there")
    with fs.open(path, "rb") as fh:
        data = fh.read()
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError (a truncated multi-byte letter)
        raise DatasetError(f"{url} is not valid JSON: {exc}") from None


def write_staging_marker(snapshot_url: str) -> None:
    """Mark a staging folder as this process's (``snapshots.begin``): who writes it and since when."""
    atomic.write_json(join(snapshot_url, STAGING_MARKER), {**writer_identity(), "started": time.time()})


def read_staging_marker(url: str) -> dict | None:
    """The staging marker of a snapshot folder; None when it is missing or damaged."""
    fs, path = filesystem(join(url, STAGING_MARKER))
    try:
        data = json.loads(fs.cat_file(path).decode("utf-8"))
    except (OSError, ValueError):  # missing (FileNotFoundError), unreadable or damaged
        return None
    return data if isinstance(data, dict) and isinstance(data.get("started"), (int, float)) else None


def writer_identity() -> dict[str, object]:
    """Who writes a staging folder: host name, pid, the process's start time, and the boot and pid namespace in
    which that pid means something (empty where /proc is missing)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_space": _pid_space(),
            "process_started": process_start(os.getpid())}


def _pid_space() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return f"{fh.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """Clock ticks after boot when ``pid`` started (Linux), None when unknown: tells a reused pid from its first."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def staging_max_age_s() -> float:
    """BIGTRAIN_STAGING_MAX_AGE_HOURS (default STAGING_MAX_AGE_HOURS) in seconds."""
    value = os.environ.get("BIGTRAIN_STAGING_MAX_AGE_HOURS", str(STAGING_MAX_AGE_HOURS))
    try:
        hours = float(value)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise DatasetError(f"BIGTRAIN_STAGING_MAX_AGE_HOURS={value!r}: expected a number of hours above 0")
    return hours * 3600


def abandoned(marker: dict, now: float) -> str | None:
    """Why the writer of a staging marker is provably gone, or None when it may still be writing. A writer of this
    host (same boot and pid namespace) is judged by its pid, any other by the marker's age."""
    me = writer_identity()
    if (marker.get("host"), marker.get("pid_space")) != (me["host"], me["pid_space"]):
        age = now - marker["started"]
        if age > staging_max_age_s():
            return f"begun on {marker.get('host')} {age / 3600:.1f} h ago, more than BIGTRAIN_STAGING_MAX_AGE_HOURS"
        return None
    pid = marker.get("pid")
    if pid == me["pid"]:
        return "left by an earlier run of this process (or by a process gone since that had its pid)"
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its writer, pid {pid} on this host, is gone"
    except PermissionError:
        pass  # alive, another user's
    started = marker.get("process_started")
    if started is not None and process_start(pid) not in (None, started):
        return f"its writer, pid {pid} on this host, is gone (the pid is another process's now)"
    return None


def exists(fs, path: str, url: str) -> bool:
    """fs.exists, with storage errors (unreachable endpoint, refused credentials) turned into a DatasetError that
    names the URL and says where the settings come from."""
    try:
        return fs.exists(path)
    except Exception as exc:  # botocore's errors do not derive from OSError
        raise storage_error(url, exc) from exc


def storage_error(url: str, exc: Exception) -> DatasetError:
    if isinstance(exc, (OSError, ValueError)):
        return DatasetError(f"cannot read {url}: {exc}")
    return DatasetError(f"cannot read {url}: {type(exc).__name__}: {exc} (object storage endpoint and credentials "
                        "come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)")


def warn_once(message: str, *args) -> None:
    key = message % args
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


@dataclass(frozen=True)
class SnapshotScan:
    """The folders under ``<dataset>/snapshots/``, each list oldest first (ids sort in creation order)."""
    committed: list[str]    # metadata.json holds a JSON object
    uncommitted: list[str]  # no metadata.json: being written, or left by a job that died
    damaged: list[str]      # a metadata.json that does not parse (truncated, garbage): not committed either
    foreign: list[str]      # not named like a bigtrain id: never read, never removed


def scan_snapshots(dataset_url: str, *, parse_all: bool = False) -> SnapshotScan:
    """What each folder under ``<dataset>/snapshots/`` is; hidden (``.``, ``_``) entries and files are skipped.
    Manifests are parsed from the newest down to the first that reads (the current snapshot), or all of them with
    ``parse_all`` (verify, datasets list): an older damaged one otherwise counts as committed until it is read."""
    url = join(dataset_url, SNAPSHOTS_DIR)
    fs, path = filesystem(url)
    scan = SnapshotScan([], [], [], [])
    if not exists(fs, path, url):
        return scan
    try:
        entries = fs.ls(path, detail=True)
    except Exception as exc:  # botocore errors too, as in exists
        raise storage_error(url, exc) from exc
    for entry in sorted(entries, key=lambda e: e["name"]):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or entry.get("type") != "directory":
            continue
        if not SNAPSHOT_ID.match(name):
            warn_once("ignoring %s: not a bigtrain snapshot (ids look like 000001-20261129T020000Z); bigtrain never "
                      "reads it nor removes it", join(url, name))
            scan.foreign.append(name)
            continue
        manifest_url = join(url, name, METADATA_FILE)
        (scan.committed if exists(fs, filesystem(manifest_url)[1], manifest_url) else scan.uncommitted).append(name)
    current_found = False
    for name in reversed(list(scan.committed)):
        if current_found and not parse_all:
            break
        if _parses(fs, join(url, name, METADATA_FILE)):
            current_found = True
        else:
            scan.committed.remove(name)
            scan.damaged.insert(0, name)
    return scan


def _parses(fs, url: str) -> bool:
    """Whether a metadata.json holds a JSON object; a damaged one is warned about once, naming the file."""
    try:
        data = fs.cat_file(filesystem(url)[1])
    except Exception as exc:  # botocore errors too, as in exists
        raise storage_error(url, exc) from exc
    try:
        if isinstance(json.loads(data.decode("utf-8")), dict):
            return True
        problem = "it is not a JSON object"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        problem = f"it is not valid JSON ({exc})"
    warn_once("%s is damaged: %s; the snapshot counts as uncommitted and no reader opens it (run `bigtrain verify`)",
              url, problem)
    return False


def snapshot_ids(dataset_url: str) -> tuple[list[str], list[str]]:
    """(committed, uncommitted) snapshot ids of a dataset folder, oldest first; a snapshot whose metadata.json is
    damaged counts as uncommitted, and folders not named like an id are no snapshots (see ``scan_snapshots``)."""
    scan = scan_snapshots(dataset_url)
    return scan.committed, sorted(scan.uncommitted + scan.damaged)


def resolve_snapshot(url: str) -> str:
    """The snapshot a reader opens: ``url`` itself when it is a snapshot folder (pinned), else the dataset's newest
    committed snapshot. Uncommitted snapshots are never returned; a dataset with none committed is an error."""
    url = to_url(url)
    fs, path = filesystem(join(url, METADATA_FILE))
    if exists(fs, path, join(url, METADATA_FILE)):
        return url
    scan = scan_snapshots(url)
    if scan.committed:
        return join(url, SNAPSHOTS_DIR, scan.committed[-1])
    if scan.uncommitted or scan.damaged:
        last = max(scan.uncommitted + scan.damaged)
        state = "not found" if last in scan.uncommitted else "is damaged"
        raise DatasetError(f"{join(url, SNAPSHOTS_DIR, last, METADATA_FILE)} {state}: {url} has no committed "
                           "snapshot, only uncommitted ones (a job is writing it, or died before its commit; rerun "
                           "the job)")
    return url  # not a dataset: dataset.manifest.read names the missing metadata.json


@contextlib.contextmanager
def open_parquet(fs, path: str):
    """A pyarrow ParquetFile of ``path`` on ``fs``, for reads with ``use_threads=False`` (see ``read_parquet``). A
    local file is opened by pyarrow itself: read through a Python file object, pyarrow 26 aborts the interpreter at
    exit now and then ("terminate called without an active exception", exit 134, about 1 run in 30 here;
    apache/arrow#50482)."""
    import pyarrow.parquet as pq

    if "Local" in type(fs).__name__:
        yield pq.ParquetFile(path)
        return
    with fs.open(path, "rb") as fh:
        yield pq.ParquetFile(fh)


def read_parquet(fs, path: str, **options):
    """The whole Parquet file ``path`` of ``fs`` as a pyarrow Table (``options``: ``columns``...)."""
    with open_parquet(fs, path) as file:
        return file.read(use_threads=False, **options)


def row_group_sizes(split_url: str) -> list[int]:
    """Rows of every row group of a Parquet dataset, in Petastorm's order (files sorted by path, then row group).

    Petastorm shards by position in exactly this order (``index % shard_count == cur_shard``), so the loader can
    tell in advance how many rows each rank will read.
    """
    return [rows for _, _, rows in row_groups(split_url)]


def row_groups(split_url: str) -> list[tuple[str, int, int]]:
    """Every row group of a Parquet dataset in Petastorm's order: (file path on its file system, index of the row
    group in the file, rows)."""
    import pyarrow.parquet as pq

    fs, path = filesystem(split_url)
    if not fs.exists(path):
        raise DatasetError(f"split {split_url} does not exist")
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet") and not os.path.basename(p).startswith(("_", ".")))
    groups = []
    for file in files:
        with fs.open(file, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            groups.extend((file, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups))
    return groups
