"""A committed snapshot opened for reading: its manifest and each split's row groups, checked against the files.

No Spark and no torch: the training loader, predict, and tests open datasets through ``load_dataset_info``.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import DatasetError
from core.paths import filesystem, join, to_url
from dataset import layout, manifest, snapshots
from dataset.manifest import DatasetSpec, Manifest
from dataset.rows import SAMPLE_ID, rows_of


@dataclass(frozen=True)
class SplitInfo:
    name: str
    url: str
    rows: int
    row_group_sizes: tuple[int, ...]
    # (file path on the split's file system, row group index in the file), aligned with row_group_sizes
    row_group_files: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    url: str                    # the snapshot folder read (a dataset folder resolves to its current snapshot)
    manifest: Manifest          # the snapshot's metadata.json
    splits: dict[str, SplitInfo]

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def spec(self) -> DatasetSpec:
        return self.manifest.spec

    @property
    def snapshot_id(self) -> str:
        """The committed snapshot's id, the same every time it is read (checkpoints record it)."""
        return self.manifest.snapshot_id


def load_dataset_info(dataset_url: str) -> DatasetInfo:
    """The manifest plus each split's row groups, of a dataset's current committed snapshot (or of the snapshot
    folder given, to pin one). Uncommitted snapshots are never read; files that disagree with the manifest (missing,
    added, resized, altered: see dataset.snapshots.reader_checksums) or with the split row counts are refused."""
    url = layout.resolve_snapshot(to_url(dataset_url))
    contents = manifest.read(url)
    snapshots.check_for_readers(url, contents)
    splits = {}
    for name, counts in contents.splits.items():
        split_url = join(url, name)
        groups = layout.row_groups(split_url) if counts.rows else []
        sizes = tuple(rows for _, _, rows in groups)
        if sum(sizes) != counts.rows:
            raise DatasetError(f"split {split_url}: metadata.json says {counts.rows} rows, "
                               f"the Parquet files hold {sum(sizes)}: the dataset is incomplete or was altered")
        splits[name] = SplitInfo(name, split_url, counts.rows, sizes, tuple((f, i) for f, i, _ in groups))
    return DatasetInfo(url, contents, splits)


def locate_rows(split_url: str, kind: str, sample_ids: set[int]) -> dict[int, tuple[str, str]]:
    """sample_id -> (source, data file) of the rows ``sample_ids`` of a split: where a row that failed to read in
    training came from, and the Parquet file that holds it (two columns read, one row group at a time)."""
    source = rows_of(kind).source
    fs, _ = filesystem(split_url)
    found: dict[int, tuple[str, str]] = {}
    for file, group, _ in layout.row_groups(split_url):
        with layout.open_parquet(fs, file) as parquet:
            table = parquet.read_row_group(group, columns=[SAMPLE_ID, source], use_threads=False)
        for sid, where in zip(table.column(SAMPLE_ID).to_pylist(), table.column(source).to_pylist()):
            if sid in sample_ids:
                found[sid] = (where, file)
        if len(found) == len(sample_ids):
            break
    return found
