"""Committed, versioned dataset snapshots (no Spark): staging, the manifest written last, and its verification.

A job writes into ``<dataset>/snapshots/<id>/`` (the staging folder) and commits by writing ``metadata.json`` there
last, with every file of the snapshot (rows, bytes, sha256), the schema fingerprint of each split and the inputs it
consumed. Until then no reader opens the folder; a job that dies leaves it uncommitted, and the next job removes it.
``verify`` re-checks a committed snapshot against its manifest; readers run the same checks on what they read.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.errors import DatasetError
from core.paths import filesystem, join
from dataset import layout, manifest
from dataset.manifest import FileEntry, Manifest

log = logging.getLogger(__name__)

_ID = re.compile(r"^(\d{6})-\d{8}T\d{6}Z$")
AUTO_FULL_CHECK_BYTES = 1 << 30  # readers checksum every file they read up to this size (BIGTRAIN_VERIFY=auto)


def new_snapshot_id(existing: list[str], now: float | None = None) -> str:
    """``<sequence>-<UTC time>``: sorts in creation order, and never repeats an id already used in the folder."""
    numbers = [int(m.group(1)) for m in map(_ID.match, existing) if m]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{max(numbers, default=0) + 1:06d}-{stamp}"


def begin(dataset_url: str) -> tuple[str, str]:
    """Remove snapshots left uncommitted by earlier runs and create a new staging folder: (snapshot id, its URL)."""
    committed, uncommitted = layout.snapshot_ids(dataset_url)
    fs, _ = filesystem(dataset_url)
    for sid in uncommitted:
        stale = join(dataset_url, layout.SNAPSHOTS_DIR, sid)
        log.warning("removing uncommitted snapshot %s (left by a run that did not finish)", stale)
        fs.rm(filesystem(stale)[1], recursive=True)
    sid = new_snapshot_id(committed + uncommitted)
    url = join(dataset_url, layout.SNAPSHOTS_DIR, sid)
    fs.makedirs(filesystem(url)[1], exist_ok=True)
    return sid, url


def sha256_of(fs, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_data_file(relpath: str) -> bool:
    """Files a manifest covers: everything but the manifest itself and hidden files (Hadoop's .crc checksums)."""
    name = relpath.rsplit("/", 1)[-1]
    return relpath != layout.METADATA_FILE and not name.startswith(".") and not name.endswith(".tmp")


def snapshot_files(snapshot_url: str) -> dict[str, int]:
    """relative path -> bytes of every data file below a snapshot folder."""
    fs, root = filesystem(snapshot_url)
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    return {path[len(root) + 1:]: int(info["size"]) for path, info in found.items()
            if info.get("type") != "directory" and _is_data_file(path[len(root) + 1:])}


def parquet_footer(fs, path: str) -> tuple[int, str]:
    """(rows, schema fingerprint) from a Parquet file's footer."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        schema = pf.schema_arrow.remove_metadata()
        return pf.metadata.num_rows, hashlib.sha256(schema.to_string().encode()).hexdigest()[:16]


def list_files(snapshot_url: str) -> tuple[dict[str, FileEntry], dict[str, str]]:
    """Every file of a written snapshot (rows, bytes, sha256 of each) and the schema fingerprint of each split."""
    fs, root = filesystem(snapshot_url)
    sizes = snapshot_files(snapshot_url)
    full = {rel: root.rstrip("/") + "/" + rel for rel in sizes}
    with ThreadPoolExecutor(max_workers=8) as pool:  # I/O bound; hashlib releases the GIL
        digests = dict(zip(sizes, pool.map(lambda rel: sha256_of(fs, full[rel]), sizes)))
    files: dict[str, FileEntry] = {}
    fingerprints: dict[str, str] = {}
    for rel in sorted(sizes):
        rows = None
        if rel.endswith(".parquet") and rel.split("/", 1)[0] in layout.SPLITS:
            rows, fingerprint = parquet_footer(fs, full[rel])
            split = rel.split("/", 1)[0]
            if fingerprints.setdefault(split, fingerprint) != fingerprint:
                raise DatasetError(f"{join(snapshot_url, rel)}: its schema differs from the other files of split "
                                   f"{split}")
        files[rel] = FileEntry(bytes=sizes[rel], sha256=digests[rel], rows=rows)
    return files, fingerprints


def commit(snapshot_url: str, draft: Manifest) -> Manifest:
    """List the snapshot's files into ``draft`` and write it as the snapshot's metadata.json: the commit."""
    files, fingerprints = list_files(snapshot_url)
    committed = draft.replace(files=files, schema_fingerprints=fingerprints)
    manifest.write(snapshot_url, committed)
    log.info("committed snapshot %s (%d files)", snapshot_url, len(files))
    return committed


@dataclass(frozen=True)
class Problem:
    url: str
    message: str

    def __str__(self) -> str:
        return f"{self.url}: {self.message}"


def check(snapshot_url: str, contents: Manifest, *, checksums: bool, scope: str = "all") -> list[Problem]:
    """Compare a snapshot's files with its manifest: missing, extra, resized, altered (sha256, when ``checksums``),
    rows and schema of every Parquet file. ``scope="read"`` limits it to what training reads (non-empty splits and
    the vocabulary), ``"all"`` (verify) covers every file."""
    files = contents.files

    def wanted(rel: str) -> bool:
        top = rel.split("/", 1)[0]
        if scope == "all":
            return True
        if top in layout.SPLITS:
            return top in contents.splits and contents.splits[top].rows > 0
        return rel == layout.VOCAB_FILE

    fs, root = filesystem(snapshot_url)
    root = root.rstrip("/")
    on_disk = snapshot_files(snapshot_url)
    problems = [Problem(join(snapshot_url, rel), "is not in the manifest (added after the commit)")
                for rel in sorted(set(on_disk) - set(files)) if wanted(rel)]
    fingerprints = contents.schema_fingerprints
    for rel, entry in sorted(files.items()):
        if not wanted(rel):
            continue
        url = join(snapshot_url, rel)
        if rel not in on_disk:
            problems.append(Problem(url, "is missing"))
        elif on_disk[rel] != entry.bytes:
            problems.append(Problem(url, f"holds {on_disk[rel]} bytes, the manifest says {entry.bytes}"))
        elif checksums and sha256_of(fs, f"{root}/{rel}") != entry.sha256:
            problems.append(Problem(url, "sha256 differs from the manifest: the file was altered or damaged"))
        elif entry.rows is not None:
            problems.extend(_check_parquet(fs, f"{root}/{rel}", url, entry, fingerprints.get(rel.split("/", 1)[0])))
    return problems


def _check_parquet(fs, path: str, url: str, entry: FileEntry, fingerprint: str | None) -> list[Problem]:
    try:
        rows, schema = parquet_footer(fs, path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged footer
        return [Problem(url, f"is not a readable Parquet file: {exc}")]
    if rows != entry.rows:
        return [Problem(url, f"holds {rows} rows, the manifest says {entry.rows}")]
    if fingerprint and schema != fingerprint:
        return [Problem(url, f"schema fingerprint {schema} differs from the split's {fingerprint}")]
    return []


def reader_checksums(contents: Manifest) -> bool:
    """Whether readers checksum what they read: BIGTRAIN_VERIFY=full (always), quick (never: sizes, rows and
    schema only), auto (default: when the data read is at most 1 GiB; `bigtrain verify` always checksums)."""
    mode = os.environ.get("BIGTRAIN_VERIFY", "auto").lower()
    if mode not in ("auto", "full", "quick"):
        raise DatasetError(f"BIGTRAIN_VERIFY={mode!r}: expected auto, full or quick")
    if mode != "auto":
        return mode == "full"
    return sum(f.bytes for f in contents.files.values()) <= AUTO_FULL_CHECK_BYTES


def check_for_readers(snapshot_url: str, contents: Manifest) -> None:
    """Refuse a damaged snapshot before training reads it; the error names the first bad file."""
    problems = check(snapshot_url, contents, checksums=reader_checksums(contents), scope="read")
    if problems:
        more = f" (and {len(problems) - 1} more problems; run `bigtrain verify {snapshot_url}`)" if len(problems) > 1 else ""
        raise DatasetError(f"{problems[0]}{more}")


@dataclass(frozen=True)
class InputDiff:
    unchanged: list[str]
    changed: list[str]
    added: list[str]
    removed: list[str]

    @property
    def any(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def describe(self) -> str:
        return (f"{len(self.added)} new, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{len(self.unchanged)} unchanged input files")


def diff_inputs(previous: dict[str, tuple[int, int]], current: dict[str, tuple[int, int]]) -> InputDiff:
    """Compare input listings (relative path -> (size, modification time in ms))."""
    return InputDiff(unchanged=sorted(k for k in current if previous.get(k) == current[k]),
                     changed=sorted(k for k in current if k in previous and previous[k] != current[k]),
                     added=sorted(k for k in current if k not in previous),
                     removed=sorted(k for k in previous if k not in current))


def write_inputs(snapshot_url: str, inputs: dict[str, tuple[str, int, int]]) -> None:
    """The input files a snapshot holds, as ``inputs.parquet`` (relpath, path, size, mtime_ms)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = sorted(inputs)
    table = pa.table({"relpath": keys, "path": [inputs[k][0] for k in keys],
                      "size": pa.array([inputs[k][1] for k in keys], pa.int64()),
                      "mtime_ms": pa.array([inputs[k][2] for k in keys], pa.int64())})
    fs, path = filesystem(join(snapshot_url, layout.INPUTS_FILE))
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh)


def read_inputs(snapshot_url: str) -> dict[str, tuple[str, int, int]]:
    import pyarrow.parquet as pq

    url = join(snapshot_url, layout.INPUTS_FILE)
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise DatasetError(f"{url} not found: the snapshot does not record its inputs")
    with fs.open(path, "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    return {r["relpath"]: (r["path"], r["size"], r["mtime_ms"]) for r in rows}


def _only_uncommitted(url: str) -> list[Problem]:
    """One problem per uncommitted snapshot folder of a dataset that has no committed snapshot (else none: a
    snapshot folder has no snapshots/ of its own)."""
    committed, uncommitted = layout.snapshot_ids(url)
    if committed:
        return []
    return [Problem(url, f"no committed snapshot; uncommitted folder {layout.SNAPSHOTS_DIR}/{sid} left by a run that "
                         "did not finish (or one still writing it): rerun the job") for sid in uncommitted]


def verify(url: str, *, checksums: bool = True) -> tuple[str, Manifest | None, list[Problem]]:
    """(snapshot URL, its manifest, problems) of a dataset's current snapshot or of one snapshot folder: every file
    against the manifest, and each split's rows against the rows its files hold."""
    unfinished = _only_uncommitted(url)
    if unfinished:
        return url, None, unfinished
    snapshot_url = layout.resolve_snapshot(url)
    try:
        contents = manifest.read(snapshot_url)
    except DatasetError as exc:
        return snapshot_url, None, [Problem(join(snapshot_url, layout.METADATA_FILE), str(exc))]
    problems = check(snapshot_url, contents, checksums=checksums)
    for split, counts in contents.splits.items():
        listed = sum(e.rows or 0 for rel, e in contents.files.items() if rel.startswith(split + "/"))
        if listed != counts.rows:
            problems.append(Problem(join(snapshot_url, split),
                                    f"metadata.json says {counts.rows} rows, the manifest's files hold {listed}"))
    return snapshot_url, contents, problems
