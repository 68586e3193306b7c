"""Staging and committing snapshots without Spark: only bigtrain's ids are snapshots, only provably abandoned
staging folders are removed, a damaged metadata.json is uncommitted, and a commit cross-checks its rows."""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time

import pytest

from core import atomic
from core.errors import DatasetError
from core.paths import filesystem, join, to_url
from dataset import layout, manifest, snapshots
from dataset.info import load_dataset_info
from dataset.manifest import Manifest, SplitCounts
from tests.dataset.test_manifest import example

ROWS = {"train": 3, "validation": 1, "test": 1}


def write_rows(url: str, rows: int, name: str = "part-00000.parquet") -> None:
    """One Parquet file of ``rows`` rows at ``<url>/<name>`` (any fsspec URL)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = filesystem(join(url, name))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        pq.write_table(pa.table({"sample_id": [f"s{i}" for i in range(rows)], "label": [0] * rows}), fh)


def draft(sid: str, rows: dict[str, int]) -> Manifest:
    base = example()
    return base.replace(snapshot=dataclasses.replace(base.snapshot, id=sid), files={}, schema_fingerprints={},
                        splits={s: SplitCounts(rows=n, row_groups=1 if n else 0, per_class={"circle": n})
                                for s, n in rows.items()})


def committed(dataset_url: str, rows: dict[str, int] = ROWS) -> str:
    """A snapshot written and committed the way the jobs do it (begin, files, commit): its id."""
    sid, url = snapshots.begin(dataset_url)
    for split, n in rows.items():
        write_rows(join(url, split), n)
    snapshots.commit(url, draft(sid, rows))
    return sid


def plant(dataset_url: str, name: str, *, metadata: bytes | None = None, marker: dict | None = None) -> str:
    url = join(dataset_url, layout.SNAPSHOTS_DIR, name)
    write_rows(join(url, "train"), 2)
    if metadata is not None:
        fs, path = filesystem(join(url, layout.METADATA_FILE))
        fs.pipe_file(path, metadata)
    if marker is not None:
        atomic.write_json(join(url, layout.STAGING_MARKER), marker)
    return url


def present(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def test_a_foreign_folder_is_neither_current_nor_removed(dataset_url, caplog):
    sid = committed(dataset_url)
    good = manifest.read(join(dataset_url, layout.SNAPSHOTS_DIR, sid)).to_dict()
    pinned = plant(dataset_url, "pinned-for-paper", metadata=json.dumps(good).encode())
    scratch = plant(dataset_url, "scratch")
    with caplog.at_level(logging.WARNING, logger="dataset.layout"):
        assert layout.snapshot_ids(dataset_url) == ([sid], [])
        assert layout.resolve_snapshot(dataset_url) == join(dataset_url, layout.SNAPSHOTS_DIR, sid)
        new_sid, _ = snapshots.begin(dataset_url)
    assert present(pinned) and present(scratch) and new_sid.startswith("000002-")
    scan = layout.scan_snapshots(dataset_url)
    assert scan.foreign == ["pinned-for-paper", "scratch"] and scan.uncommitted == [new_sid]
    warnings = [r.getMessage() for r in caplog.records if "not a bigtrain snapshot" in r.getMessage()]
    assert sorted(w.split(": ")[0] for w in warnings) == [f"ignoring {pinned}", f"ignoring {scratch}"]  # once each


def marker_of(pid: int, **changes) -> dict:
    return {**layout.writer_identity(), "pid": pid, "process_started": layout.process_start(pid),
            "started": time.time(), **changes}


def test_begin_removes_only_staging_folders_whose_writer_is_provably_gone(tmp_path, caplog, monkeypatch):
    ds = to_url(str(tmp_path / "ds"))
    committed(ds)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = {"host": "another-host", "pid_space": "elsewhere"}
    folders = {
        "live writer": plant(ds, "000002-20261128T020000Z", marker=marker_of(live.pid)),
        "dead writer": plant(ds, "000003-20261128T020000Z", marker=marker_of(dead.pid)),
        "no marker": plant(ds, "000004-20261128T020000Z"),
        "other host, 1 h": plant(ds, "000005-20261128T020000Z", marker=marker_of(1, **other,
                                                                                  started=time.time() - 3600)),
        "other host, 30 h": plant(ds, "000006-20261128T020000Z", marker=marker_of(1, **other,
                                                                                   started=time.time() - 30 * 3600)),
        "damaged manifest": plant(ds, "000007-20261128T020000Z", metadata=b'{"kind": "ima',
                                  marker=marker_of(dead.pid)),
    }
    try:
        with caplog.at_level(logging.WARNING):
            sid, _ = snapshots.begin(ds)
    finally:
        live.kill()
        live.wait()
    kept = {what for what, url in folders.items() if present(url)}
    assert kept == {"live writer", "no marker", "other host, 1 h", "damaged manifest"}
    assert sid.startswith("000008-")
    log = caplog.text
    assert f"removing uncommitted snapshot {folders['dead writer']}: its writer, pid {dead.pid} on this host, is gone" in log
    assert f"leaving uncommitted snapshot {folders['live writer']}: its writer (pid {live.pid}" in log
    assert f"leaving {folders['no marker']}: uncommitted, and without a staging marker" in log

    monkeypatch.setenv("BIGTRAIN_STAGING_MAX_AGE_HOURS", "0.5")  # the age limit is the setting's
    snapshots.begin(ds)
    assert not present(folders["other host, 1 h"]) and not present(folders["live writer"])  # killed since


def test_an_earlier_unfinished_run_of_this_process_is_abandoned(dataset_url):
    _, first = snapshots.begin(dataset_url)
    write_rows(join(first, "train"), 2)
    _, second = snapshots.begin(dataset_url)
    assert not present(first) and present(join(second, layout.STAGING_MARKER))


def test_a_wrong_age_setting_is_named(monkeypatch):
    monkeypatch.setenv("BIGTRAIN_STAGING_MAX_AGE_HOURS", "a day")
    with pytest.raises(DatasetError, match="BIGTRAIN_STAGING_MAX_AGE_HOURS='a day'"):
        layout.abandoned({"host": "another-host", "started": 0.0}, time.time())


def test_a_damaged_manifest_counts_as_uncommitted_and_readers_take_the_one_before(dataset_url, caplog):
    first = committed(dataset_url)
    second = committed(dataset_url)
    broken = join(dataset_url, layout.SNAPSHOTS_DIR, second, layout.METADATA_FILE)
    fs, path = filesystem(broken)
    fs.pipe_file(path, fs.cat_file(path)[:200])  # a commit cut short by a power loss on a file system without fsync
    with caplog.at_level(logging.WARNING, logger="dataset.layout"):
        assert layout.snapshot_ids(dataset_url) == ([first], [second])
        assert load_dataset_info(dataset_url).snapshot_id == first
    assert f"{broken} is damaged: it is not valid JSON" in caplog.text
    url, contents, problems = snapshots.verify(dataset_url)
    assert url.endswith(first) and contents.snapshot_id == first
    damaged = (f"{dataset_url}: snapshots/{second}/metadata.json is damaged (not a JSON object): that snapshot "
               "counts as uncommitted; restore the file or remove the folder")
    assert [str(p) for p in problems] == [damaged]
    pinned = snapshots.verify(join(dataset_url, layout.SNAPSHOTS_DIR, second))[2]
    assert len(pinned) == 1 and str(pinned[0]).startswith(f"{broken}: {broken} is not valid JSON")
    snapshots.begin(dataset_url)
    assert present(broken)  # a damaged commit is never removed


def test_verify_exits_1_on_a_dataset_with_a_damaged_manifest(tmp_path, capsys):
    from jobs.verify import main as verify

    ds = to_url(str(tmp_path / "ds"))
    committed(ds)
    second = committed(ds)
    (tmp_path / "ds" / "snapshots" / second / "metadata.json").write_text("garbage")
    assert verify([str(tmp_path / "ds")]) == 1
    assert f"snapshots/{second}/metadata.json is damaged" in capsys.readouterr().out


def test_only_a_damaged_manifest_is_an_error_naming_it(tmp_path):
    ds = to_url(str(tmp_path / "ds"))
    sid = committed(ds)
    (tmp_path / "ds" / "snapshots" / sid / "metadata.json").write_bytes(b'{"kind": "caf\xc3')  # cut inside a letter
    with pytest.raises(DatasetError, match=f"snapshots/{sid}/metadata.json is damaged: .* has no committed snapshot"):
        load_dataset_info(ds)
    with pytest.raises(DatasetError, match=f"snapshots/{sid}/metadata.json is not valid JSON"):
        manifest.read(join(ds, "snapshots", sid))


def test_commit_refuses_a_split_whose_files_hold_other_rows(dataset_url):
    sid, url = snapshots.begin(dataset_url)
    for split, n in ROWS.items():
        write_rows(join(url, split), n)
    write_rows(join(url, "validation"), 2, name="part-00001.parquet")  # another writer's file in the same folder
    with pytest.raises(DatasetError, match=rf"{url}/validation: the job wrote 1 rows to split validation, its files "
                                           "hold 3: another writer"):
        snapshots.commit(url, draft(sid, ROWS))
    assert not present(join(url, layout.METADATA_FILE))


def test_commit_refuses_a_staging_folder_another_writer_took_over(dataset_url):
    sid, url = snapshots.begin(dataset_url)
    for split, n in ROWS.items():
        write_rows(join(url, split), n)
    atomic.write_json(join(url, layout.STAGING_MARKER), marker_of(1, host="another-host"))
    with pytest.raises(DatasetError, match=r"\.bigtrain-staging: the staging folder is no longer this job's \(its "
                                           r"marker: pid 1 on another-host"):
        snapshots.commit(url, draft(sid, ROWS))
    fs, path = filesystem(join(url, layout.STAGING_MARKER))
    fs.rm(path)
    with pytest.raises(DatasetError, match="its marker: missing"):
        snapshots.commit(url, draft(sid, ROWS))
    assert not present(join(url, layout.METADATA_FILE))


def test_inputs_parquet_is_written_atomically(tmp_path, monkeypatch):
    import os

    url = to_url(str(tmp_path))
    snapshots.write_inputs(url, {"a.png": ("file:/a.png", 1, 2)})

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        snapshots.write_inputs(url, {"b.png": ("file:/b.png", 3, 4)})
    assert snapshots.read_inputs(url) == {"a.png": ("file:/a.png", 1, 2)}
    assert os.listdir(tmp_path) == [layout.INPUTS_FILE]


def test_datasets_list_marks_a_damaged_manifest_and_leaves_out_foreign_folders(tmp_path, capsys):
    from jobs.datasets import main as datasets

    ds = to_url(str(tmp_path / "ds"))
    first, second = committed(ds), committed(ds)
    plant(ds, "pinned-for-paper", metadata=(tmp_path / "ds" / "snapshots" / first / "metadata.json").read_bytes())
    (tmp_path / "ds" / "snapshots" / second / "metadata.json").write_text("{")
    assert datasets(["list", str(tmp_path / "ds")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:2] for line in lines] == [["*", first], [second, "(damaged"]]


def test_readers_parse_only_the_current_manifest_and_verify_parses_every_one(tmp_path):
    ds = to_url(str(tmp_path / "ds"))
    first, second = committed(ds), committed(ds)
    (tmp_path / "ds" / "snapshots" / first / "metadata.json").write_text("[]")
    assert layout.snapshot_ids(ds) == ([first, second], [])  # readers open the current one, which reads
    assert layout.scan_snapshots(ds, parse_all=True).damaged == [first]
    damaged = (f"{ds}: snapshots/{first}/metadata.json is damaged (not a JSON object): that snapshot counts as "
               "uncommitted; restore the file or remove the folder")
    assert [str(p) for p in snapshots.verify(ds)[2]] == [damaged]


def test_commit_makes_every_file_durable_before_the_manifest(tmp_path, monkeypatch):
    import os

    ds = to_url(str(tmp_path / "ds"))
    sid, url = snapshots.begin(ds)
    for split, n in ROWS.items():
        write_rows(join(url, split), n)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(dst))), real_replace(src, dst)))
    snapshots.commit(url, draft(sid, ROWS))
    folder = tmp_path / "ds" / "snapshots" / sid
    commit_at = events.index(("replace", str(folder / layout.METADATA_FILE)))
    synced = {path for what, path in events[:commit_at] if what == "fsync"}
    wanted = {str(folder / split / "part-00000.parquet") for split in ROWS} | {str(folder / s) for s in ROWS}
    assert wanted <= synced and str(folder) in synced
