"""Committed, versioned dataset snapshots (no Spark): staging, the manifest written last, and its verification.

A job writes into ``<dataset>/snapshots/<id>/`` (the staging folder, which ``begin`` creates with a hidden marker
``.bigtrain-staging`` naming its writer: host, pid, start time) and commits by writing ``metadata.json`` there last,
with every file of the snapshot (rows, bytes, sha256), the schema fingerprint of each split and the inputs it
consumed. Until then no reader opens the folder. ``commit`` refuses when the marker is no longer this writer's or
when a split's files do not hold the rows the job wrote. ``verify`` re-checks a committed snapshot against its
manifest; readers run the same checks on what they read.

A staging folder that never committed is removed by a later ``begin`` only when it is provably abandoned
(``layout.abandoned``): its marker names a process of this host that is gone (or this very process), or another
host and is older than ``BIGTRAIN_STAGING_MAX_AGE_HOURS`` (default 24). Every other folder stays, logged: a live
writer's, one without a marker, one with a damaged metadata.json, and any folder not named like a bigtrain id.
One process runs one job at a time: two threads of one process writing one dataset are not told apart.

Two writers. On a local folder the jobs hold ``<dataset>/.bigtrain.lock``, so there is one writer at a time. On
object storage and HDFS there is no such lock (the pipeline runner's lock covers one machine), and this is what
is *not* promised when two jobs write one dataset at once:
* Both may commit, as two snapshots; the current one is the higher id, which need not be the one that finished
  last, and neither sees the other's inputs as its parent. Run one writer per dataset (one scheduler) there.
* Both may pick the same id (listing and creating a folder is not atomic on an object store). The second marker
  replaces the first, so the first writer's ``commit`` refuses; files of both in one split make the row cross-check
  refuse the other commit. A writer whose files land after the other's commit leaves files that ``verify`` reports
  as not in the manifest; it is not prevented.
* A writer on another host that runs longer than the age limit (or whose clock is far off) can lose its staging
  folder to another writer's ``begin``; its commit then refuses (marker missing).
* Writes to object storage are whole objects (a reader never sees half of metadata.json); on HDFS and other
  stores without atomic replace a crash mid-write can leave a damaged metadata.json, which counts as uncommitted.

``remove`` (``bigtrain datasets gc``) deletes a committed snapshot so that a crash at any moment leaves either the
whole snapshot or nothing a reader takes for one; the next gc finishes what it left (``unfinished_removals``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core import atomic
from core.errors import DatasetError
from core.paths import filesystem, join, local_path
from dataset import layout, manifest
from dataset.manifest import FileEntry, Manifest
from dataset.rows import SAMPLE_ID, rows_of

log = logging.getLogger(__name__)

AUTO_FULL_CHECK_BYTES = 1 << 30  # readers checksum every file they read up to this size (BIGTRAIN_VERIFY=auto)


def new_snapshot_id(existing: list[str], now: float | None = None) -> str:
    """``<sequence>-<UTC time>``: sorts in creation order, and never repeats an id already used in the folder."""
    numbers = [int(m.group(1)) for m in map(layout.SNAPSHOT_ID.match, existing) if m]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{max(numbers, default=0) + 1:06d}-{stamp}"


def begin(dataset_url: str) -> tuple[str, str]:
    """Remove the abandoned staging folders of earlier runs and create a new one, marked as this process's:
    (snapshot id, its URL)."""
    scan = layout.scan_snapshots(dataset_url)
    fs, _ = filesystem(dataset_url)
    for sid in scan.uncommitted:
        _remove_if_abandoned(fs, join(dataset_url, layout.SNAPSHOTS_DIR, sid))
    sid = new_snapshot_id(scan.committed + scan.uncommitted + scan.damaged)
    url = join(dataset_url, layout.SNAPSHOTS_DIR, sid)
    fs.makedirs(filesystem(url)[1], exist_ok=True)
    layout.write_staging_marker(url)
    return sid, url


def _remove_if_abandoned(fs, url: str) -> None:
    path = filesystem(url)[1]
    marker = layout.read_staging_marker(url)
    if marker is None:
        layout.warn_once("leaving %s: uncommitted, and without a staging marker bigtrain can read, so not provably "
                         "left by a bigtrain job; remove it by hand if it is no longer needed", url)
        return
    if fs.exists(path.rstrip("/") + "/" + layout.METADATA_FILE):  # damaged, or committed since the listing
        return
    reason = layout.abandoned(marker, time.time())
    if reason is None:
        log.warning("leaving uncommitted snapshot %s: its writer (pid %s on %s) may still be running", url,
                    marker.get("pid"), marker.get("host"))
        return
    log.warning("removing uncommitted snapshot %s: %s", url, reason)
    fs.rm(path, recursive=True)


def remove(dataset_url: str, sid: str) -> int:
    """Remove the committed snapshot ``sid`` so that no reader ever takes what is left of it for a snapshot; the
    bytes freed. On a local disk the folder is renamed to a hidden name first (one atomic step, made durable), then
    deleted; elsewhere (no rename) it is marked, then its metadata.json goes first, so what a crash leaves is
    uncommitted. ``finish_removals`` completes either."""
    url = join(dataset_url, layout.SNAPSHOTS_DIR, sid)
    fs, path = filesystem(url)
    path = path.rstrip("/")
    freed = size(dataset_url, sid)
    local = local_path(url)
    if local is not None:
        folder = Path(local).parent
        trash = folder / f"{layout.REMOVING_PREFIX}{sid}"
        os.rename(local, trash)
        atomic.fsync_folder(folder)
        shutil.rmtree(trash)
    else:
        fs.pipe_file(f"{path}/{layout.REMOVAL_MARKER}", b"")
        fs.rm(f"{path}/{layout.METADATA_FILE}")
        fs.rm(path, recursive=True)
    log.info("removed snapshot %s (%d bytes)", url, freed)
    return freed


def size(dataset_url: str, sid: str) -> int:
    """Bytes of every file of snapshot ``sid``, hidden ones included."""
    fs, path = filesystem(join(dataset_url, layout.SNAPSHOTS_DIR, sid))
    return sum(int(info["size"]) for info in fs.find(path, detail=True).values())


def unfinished_removals(dataset_url: str) -> list[str]:
    """The folders under ``<dataset>/snapshots/`` that an interrupted ``remove`` left (names relative to it)."""
    url = join(dataset_url, layout.SNAPSHOTS_DIR)
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True) if e.get("type") == "directory"]
    return sorted(n for n in names if n.startswith(layout.REMOVING_PREFIX)
                  or (layout.SNAPSHOT_ID.match(n) and fs.exists(f"{path.rstrip('/')}/{n}/{layout.REMOVAL_MARKER}")
                      and not fs.exists(f"{path.rstrip('/')}/{n}/{layout.METADATA_FILE}")))


def finish_removals(dataset_url: str, names: list[str]) -> None:
    """Delete what ``unfinished_removals`` found."""
    fs, path = filesystem(join(dataset_url, layout.SNAPSHOTS_DIR))
    for name in names:
        log.warning("finishing the removal of %s, which an interrupted gc left",
                    join(dataset_url, layout.SNAPSHOTS_DIR, name))
        fs.rm(f"{path.rstrip('/')}/{name}", recursive=True)


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
    atomic.make_durable(snapshot_url, sorted(sizes))  # on disk before the manifest that names them
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
    """List the snapshot's files into ``draft`` and write it as the snapshot's metadata.json: the commit. Refused
    when the staging folder is no longer this writer's, or a split's files hold other rows than ``draft`` says."""
    _check_still_ours(snapshot_url)
    files, fingerprints = list_files(snapshot_url)
    for split, held in rows_per_split(files).items():
        wrote = draft.splits[split].rows if split in draft.splits else 0
        if held != wrote:
            raise DatasetError(f"{join(snapshot_url, split)}: the job wrote {wrote} rows to split {split}, its files "
                               f"hold {held}: another writer or a lost write changed the snapshot; not committed")
    committed = draft.replace(files=files, schema_fingerprints=fingerprints)
    manifest.write(snapshot_url, committed)
    log.info("committed snapshot %s (%d files)", snapshot_url, len(files))
    return committed


def _check_still_ours(snapshot_url: str) -> None:
    marker, me = layout.read_staging_marker(snapshot_url), layout.writer_identity()
    if marker is None or any(marker.get(k) != v for k, v in me.items()):
        holder = "missing" if marker is None else f"pid {marker.get('pid')} on {marker.get('host')}"
        raise DatasetError(f"{join(snapshot_url, layout.STAGING_MARKER)}: the staging folder is no longer this job's "
                           f"(its marker: {holder}; this job: pid {me['pid']} on {me['host']}): another writer took "
                           "it over or removed it; not committed")


def rows_per_split(files: dict[str, FileEntry]) -> dict[str, int]:
    """Rows the Parquet files of each split hold."""
    return {split: sum(e.rows or 0 for rel, e in files.items() if rel.startswith(split + "/")) for split in layout.SPLITS}


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
    """The input files a snapshot holds, as ``inputs.parquet`` (relpath, path, size, mtime_ms), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = sorted(inputs)
    table = pa.table({"relpath": keys, "path": [inputs[k][0] for k in keys],
                      "size": pa.array([inputs[k][1] for k in keys], pa.int64()),
                      "mtime_ms": pa.array([inputs[k][2] for k in keys], pa.int64())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic.write_bytes(join(snapshot_url, layout.INPUTS_FILE), sink.getvalue().to_pybytes())


def read_inputs(snapshot_url: str) -> dict[str, tuple[str, int, int]]:
    url = join(snapshot_url, layout.INPUTS_FILE)
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise DatasetError(f"{url} not found: the snapshot does not record its inputs")
    rows = layout.read_parquet(fs, path).to_pylist()
    return {r["relpath"]: (r["path"], r["size"], r["mtime_ms"]) for r in rows}


def _unfinished(url: str) -> tuple[bool, list[Problem]]:
    """(whether ``url`` has a committed snapshot, a problem per damaged metadata.json and, when none is committed,
    per uncommitted folder). A snapshot folder has no snapshots/ of its own: (False, [])."""
    scan = layout.scan_snapshots(url, parse_all=True)
    where = f"{layout.SNAPSHOTS_DIR}/{{}}/{layout.METADATA_FILE}"
    problems = [Problem(url, f"{where.format(sid)} is damaged (not a JSON object): that snapshot counts as "
                             "uncommitted; restore the file or remove the folder") for sid in scan.damaged]
    if not scan.committed:
        problems += [Problem(url, f"no committed snapshot; uncommitted folder {layout.SNAPSHOTS_DIR}/{sid} left by a "
                                  "run that did not finish (or one still writing it): rerun the job")
                     for sid in scan.uncommitted]
    return bool(scan.committed), sorted(problems, key=str)


def verify(url: str, *, checksums: bool = True) -> tuple[str, Manifest | None, list[Problem]]:
    """(snapshot URL, its manifest, problems) of a dataset's current snapshot or of one snapshot folder: every file
    against the manifest, and each split's rows against the rows its files hold; a dataset's damaged manifests."""
    any_committed, unfinished = _unfinished(url)
    if unfinished and not any_committed:
        return url, None, unfinished
    snapshot_url = layout.resolve_snapshot(url)
    try:
        contents = manifest.read(snapshot_url)
    except DatasetError as exc:
        return snapshot_url, None, [Problem(join(snapshot_url, layout.METADATA_FILE), str(exc))]
    problems = unfinished + check(snapshot_url, contents, checksums=checksums)
    if checksums and not problems:  # every file is the one committed: are its rows still readable?
        problems += unreadable_rows(snapshot_url, contents)
    listed = rows_per_split(contents.files)
    for split, counts in contents.splits.items():
        if listed.get(split, 0) != counts.rows:
            problems.append(Problem(join(snapshot_url, split), f"metadata.json says {counts.rows} rows, the "
                                                               f"manifest's files hold {listed.get(split, 0)}"))
    return snapshot_url, contents, problems


def unreadable_rows(snapshot_url: str, contents: Manifest) -> list[Problem]:
    """The stored rows that training could not read (it replaces each by a stand-in and logs it in
    ``read_errors.jsonl``): a PNG or JPEG image that does not decode, token ids whose bytes disagree with the row's
    length. A file rewritten with such rows and a manifest to match passes the checksums; this reads every row."""
    import numpy as np

    contract = rows_of(contents.kind)
    if contents.kind == "image" and contents.image.codec == "raw":
        return []  # raw pixels are any bytes of the right size: the Parquet reader checks the rest
    columns = [SAMPLE_ID, contract.source, *contract.features]
    itemsize = np.dtype(contents.sequence.token_dtype).itemsize if contents.sequence else 0
    problems = []
    for split, counts in contents.splits.items():
        if not counts.rows:
            continue
        fs, _ = filesystem(join(snapshot_url, split))
        for file, group, _ in layout.row_groups(join(snapshot_url, split)):
            with layout.open_parquet(fs, file) as parquet:
                table = parquet.read_row_group(group, columns=columns, use_threads=False)
            values = [table.column(c).to_pylist() for c in columns]
            for sample_id, source, *feature in zip(*values):
                why = _unreadable(feature, contents.kind, itemsize)
                if why:
                    problems.append(Problem(f"{file} row group {group}", f"row {sample_id} ({source}): {why}"))
    return problems


def _unreadable(feature: list, kind: str, itemsize: int) -> str | None:
    import numpy as np

    if kind == "image":
        import cv2

        if cv2.imdecode(np.frombuffer(feature[0], np.uint8), cv2.IMREAD_UNCHANGED) is None:
            return "the stored image does not decode"
        return None
    tokens, length = feature
    if len(tokens) != length * itemsize:
        return f"its {len(tokens)} bytes of token ids disagree with its length {length}"
    return None
