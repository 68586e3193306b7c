"""The manifest (``<snapshot>/metadata.json``), typed: the contract between the Spark jobs that write a dataset and
everything that reads it (incremental runs, verify, datasets, training, checkpoints, predict).

One writer (``write``) and one reader (``read``). The JSON on disk is the format_version 2 layout that bigtrain has
written since snapshots came in, key for key, so a metadata.json written before these types existed reads
unchanged (tests/dataset/fixtures holds two). ``from_dict`` names the file and the key when one is missing or of
the wrong type; a dataset of another format version is refused with what to do.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from core import atomic, typed
from core.errors import DatasetError
from core.paths import filesystem, join
from core.redact import redact
from dataset import layout

Kind = Literal["image", "sequence"]
# A field the format has always written as null when unset, rather than left out (as other unset fields are).
NULL_WRITTEN = {"written_as_null": True}


@dataclass(frozen=True)
class ImageSpec:
    """How images are stored: ``size`` x ``size`` pixels, ``channels`` 1 or 3, PNG/JPEG bytes or raw arrays."""
    size: int
    channels: int
    codec: str
    shape: list[int]


@dataclass(frozen=True)
class SequenceSpec:
    """How token sequences are stored: ids of ``token_dtype`` below ``vocab_size`` (0 padding, 1 unknown), at most
    ``max_length`` of them, and the vocabulary in ``vocab_file``; lengths seen, over the snapshot's lineage."""
    vocab_size: int
    token_dtype: str
    max_length: int
    tokenizer: str
    tokens_field: str | None = field(default=None, metadata=NULL_WRITTEN)
    vocab_file: str = layout.VOCAB_FILE
    pad_id: int = 0
    unk_id: int = 1
    longest: int | None = field(default=None, metadata=NULL_WRITTEN)
    mean_length: float | None = field(default=None, metadata=NULL_WRITTEN)
    truncated: int = 0


@dataclass(frozen=True)
class SplitCounts:
    rows: int
    row_groups: int
    per_class: dict[str, int]


@dataclass(frozen=True)
class DuplicateCounts:
    """Copies of one content among the snapshot's records (``pipelines.duplicates``), as the run that wrote it
    found them (records rejected as copies are read again by every incremental run, so the counts cover the whole
    snapshot): ``groups`` contents held by more than one record, ``duplicates`` records after the first of a group
    of one class, ``conflicting`` records of groups under more than one class, ``rejected`` those of both kinds
    rejected (0 under ``keep``), ``cross_split`` groups whose rows stay in more than one split (0, unless rows of
    a snapshot written before fingerprints are kept, or a new row joins near copies committed in two splits)."""
    mode: str
    groups: int
    duplicates: int
    conflicting: int
    rejected: int
    cross_split: int
    near_groups: int | None = None  # images: groups of near copies (rows of more than one fingerprint); None: not
    near_rows: int | None = None    # searched (texts, near_duplicates: false); rows in those groups


@dataclass(frozen=True)
class FileEntry:
    """One file of the snapshot: its size and digest, and for a split's Parquet file its rows."""
    bytes: int
    sha256: str
    rows: int | None = None


@dataclass(frozen=True)
class InputCounts:
    """The input files the snapshot holds (listed in ``file``), and what this run did with them."""
    file: str
    files: int
    bytes: int
    processed: int
    added: int | None = field(default=None, metadata=NULL_WRITTEN)  # None: a full run
    changed: int | None = field(default=None, metadata=NULL_WRITTEN)
    removed: int | None = field(default=None, metadata=NULL_WRITTEN)


@dataclass(frozen=True)
class Lineage:
    """Where the snapshot comes from: its id and parent, the run that wrote it, and the config it was written with."""
    id: str
    parent: str | None = field(metadata=NULL_WRITTEN)
    created: str
    committed: str
    run: Literal["full", "incremental"]
    reason: str
    mode: str
    bigtrain_version: str
    config_fingerprint: str
    inputs: InputCounts
    records_processed: int
    rejected_processed: int


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know of a dataset: its kind, classes and image or sequence shape. Checkpoints keep it,
    so a model is rebuilt without the dataset."""
    kind: Kind
    classes: list[str]
    image: ImageSpec | None = None
    sequence: SequenceSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str) -> DatasetSpec:
        return typed.build(cls, data, prefix="", rules=_rules(where))


@dataclass(frozen=True)
class Manifest:
    """A snapshot's metadata.json. ``snapshot`` is None only while a job builds the manifest (``incremental.finish``
    adds the lineage), ``files`` and ``schema_fingerprints`` are empty until ``snapshots.commit`` lists the files."""
    kind: Kind
    input: str
    classes: list[str]
    class_to_index: dict[str, int]
    splits: dict[str, SplitCounts]
    records_read: int
    rejected: int
    rejected_by_reason: dict[str, int]
    config: dict[str, Any]
    snapshot: Lineage | None = None
    image: ImageSpec | None = None
    sequence: SequenceSpec | None = None
    input_format: str | None = None          # sequences: jsonl, csv or parquet
    csv_header_lines: int | None = None      # sequences: CSV header lines read (not records)
    duplicates: DuplicateCounts | None = None  # None: a snapshot written before the search, or duplicates: off
    files: dict[str, FileEntry] = field(default_factory=dict)
    schema_fingerprints: dict[str, str] = field(default_factory=dict)
    format_version: int = layout.FORMAT_VERSION

    def __post_init__(self) -> None:
        # The job's config as stored, printed (datasets show) and copied into checkpoints: secrets never (a
        # spark_conf holding spark.hadoop.fs.s3a.secret.key is the usual case), also when read from an older file.
        object.__setattr__(self, "config", redact(self.config))
        # One order wherever a manifest is shown, whatever the file's (JSON is written with sorted keys):
        # splits as layout.SPLITS, rejects by count then name.
        rank = {name: i for i, name in enumerate(layout.SPLITS)}
        for name in ("splits", "schema_fingerprints"):
            mapping = getattr(self, name)
            object.__setattr__(self, name, dict(sorted(mapping.items(), key=lambda kv: (rank.get(kv[0], 99), kv[0]))))
        object.__setattr__(self, "rejected_by_reason",
                           dict(sorted(self.rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))))

    @property
    def snapshot_id(self) -> str:
        if self.snapshot is None:
            raise DatasetError("the manifest is not committed yet: it has no snapshot id")
        return self.snapshot.id

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec(self.kind, list(self.classes), self.image, self.sequence)

    @property
    def rows(self) -> int:
        """Rows over all splits."""
        return sum(s.rows for s in self.splits.values())

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: fields that do not apply to the dataset's kind (None) are left out, as they always were."""
        return _plain(self)

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format_version") != layout.FORMAT_VERSION:
            raise DatasetError(f"{where}: format_version {data.get('format_version')!r}, this bigtrain reads "
                               f"{layout.FORMAT_VERSION} (datasets written before snapshots: run the preprocessing "
                               "job again)")
        for key in ("snapshot", "files"):  # a committed manifest has both (a job's draft has neither yet)
            if key not in data:
                raise DatasetError(f"{where}: key {key} is missing")
        return typed.build(cls, data, prefix="", rules=_rules(where))


def read(snapshot_url: str) -> Manifest:
    """The manifest of a committed snapshot folder; DatasetError naming the file when it is missing or damaged."""
    url = join(snapshot_url, layout.METADATA_FILE)
    fs, path = filesystem(url)
    if not layout.exists(fs, path, url):
        raise DatasetError(f"{url} not found: {snapshot_url} is not a bigtrain dataset "
                           "(write one with `bigtrain preprocess-images`), or its job did not finish")
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError where a multi-byte letter was cut off
        raise DatasetError(f"{url} is not valid JSON: {exc}") from None
    return Manifest.from_dict(data, where=url)


def write(snapshot_url: str, manifest: Manifest) -> None:
    """Write metadata.json, atomically: its presence commits the snapshot, so it is written last."""
    atomic.write_json(join(snapshot_url, layout.METADATA_FILE), manifest.to_dict())


def _rules(where: str) -> typed.Rules:
    """Keys named after the file (``.../metadata.json: key splits.train.rows``); keys a newer bigtrain may add are
    left alone."""
    return typed.Rules(error=DatasetError, label=f"{where}: key", unknown_keys_are_errors=False)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None or f.metadata.get("written_as_null")}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
