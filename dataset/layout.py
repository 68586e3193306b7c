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

A snapshot folder without metadata.json is uncommitted (being written, or left by a job that died) and no reader
opens it. Readers take either the dataset folder (its current snapshot) or one snapshot folder (pinned).
"""
from __future__ import annotations

import json
import os

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
    with fs.open(path, "r") as fh:
        return json.load(fh)


def exists(fs, path: str, url: str) -> bool:
    """fs.exists, with storage errors (unreachable endpoint, refused credentials) turned into a DatasetError that
    names the URL and says where the settings come from."""
    try:
        return fs.exists(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {url}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - botocore's errors do not derive from OSError
        raise DatasetError(f"cannot read {url}: {type(exc).__name__}: {exc} (object storage endpoint and credentials "
                           "come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)"
                           ) from exc


def snapshot_ids(dataset_url: str) -> tuple[list[str], list[str]]:
    """(committed, uncommitted) snapshot ids of a dataset folder, oldest first (ids sort in creation order)."""
    url = join(dataset_url, SNAPSHOTS_DIR)
    fs, path = filesystem(url)
    if not exists(fs, path, url):
        return [], []
    committed, uncommitted = [], []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or not fs.isdir(entry):
            continue
        (committed if fs.exists(entry.rstrip("/") + "/" + METADATA_FILE) else uncommitted).append(name)
    return committed, uncommitted


def resolve_snapshot(url: str) -> str:
    """The snapshot a reader opens: ``url`` itself when it is a snapshot folder (pinned), else the dataset's newest
    committed snapshot. Uncommitted snapshots are never returned; a dataset with none committed is an error."""
    url = to_url(url)
    fs, path = filesystem(join(url, METADATA_FILE))
    if exists(fs, path, join(url, METADATA_FILE)):
        return url
    committed, uncommitted = snapshot_ids(url)
    if committed:
        return join(url, SNAPSHOTS_DIR, committed[-1])
    if uncommitted:
        raise DatasetError(f"{join(url, SNAPSHOTS_DIR, uncommitted[-1], METADATA_FILE)} not found: {url} has no "
                           "committed snapshot, only uncommitted ones (a job is writing it, or died before its "
                           "commit; rerun the job)")
    return url  # not a dataset: dataset.manifest.read names the missing metadata.json


def row_group_sizes(split_url: str) -> list[int]:
    """Rows of every row group of a Parquet dataset, in Petastorm's order (files sorted by path, then row group).

    Petastorm shards by position in exactly this order (``index % shard_count == cur_shard``), so the loader can
    tell in advance how many rows each rank will read.
    """
    import pyarrow.parquet as pq

    fs, path = filesystem(split_url)
    if not fs.exists(path):
        raise DatasetError(f"split {split_url} does not exist")
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet") and not os.path.basename(p).startswith(("_", ".")))
    sizes = []
    for file in files:
        with fs.open(file, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            sizes.extend(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return sizes
