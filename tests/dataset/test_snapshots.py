"""Snapshot bookkeeping without Spark: ids, input diffs, the reader's checksum setting, the lock."""
from __future__ import annotations

import pytest

from core import locking
from core.errors import DatasetError
from dataset import snapshots
from dataset.manifest import FileEntry
from tests.dataset.test_manifest import example


def test_snapshot_ids_sort_in_creation_order_and_never_repeat():
    first = snapshots.new_snapshot_id([], now=0)
    assert first == "000001-19700101T000000Z"
    later = snapshots.new_snapshot_id([first, "000009-19700101T000000Z", "junk"], now=0)
    assert later == "000010-19700101T000000Z" and sorted([later, first]) == [first, later]


def test_input_diff_sees_new_changed_and_removed_files():
    previous = {"a/1.png": (10, 100), "a/2.png": (10, 100), "b/3.png": (5, 100)}
    current = {"a/1.png": (10, 100), "a/2.png": (11, 200), "c/4.png": (7, 300)}
    diff = snapshots.diff_inputs(previous, current)
    assert (diff.unchanged, diff.changed, diff.added, diff.removed) == (["a/1.png"], ["a/2.png"], ["c/4.png"], ["b/3.png"])
    assert diff.any and not snapshots.diff_inputs(current, current).any
    assert diff.describe() == "1 new, 1 changed, 1 removed, 1 unchanged input files"


@pytest.mark.parametrize("mode, size, full", [("auto", 10, True), ("auto", 2 << 30, False), ("full", 2 << 30, True),
                                              ("quick", 10, False)])
def test_readers_checksum_small_snapshots_unless_told_otherwise(monkeypatch, mode, size, full):
    monkeypatch.setenv("BIGTRAIN_VERIFY", mode)
    contents = example().replace(files={"train/a.parquet": FileEntry(bytes=size, sha256="-", rows=1)})
    assert snapshots.reader_checksums(contents) is full


def test_a_wrong_verify_setting_is_named(monkeypatch):
    monkeypatch.setenv("BIGTRAIN_VERIFY", "sometimes")
    with pytest.raises(DatasetError, match="BIGTRAIN_VERIFY='sometimes'"):
        snapshots.reader_checksums(example())


def test_a_held_lock_is_refused_naming_its_holder(tmp_path):
    path = str(tmp_path / "state" / "lock")
    with locking.hold(path, what="pipeline x"):
        with pytest.raises(locking.LockHeld, match=r"pipeline x is already running \(lock .*/state/lock held by .*\"pid\""):
            with locking.hold(path, what="pipeline x"):
                pass
    with locking.hold(path, what="pipeline x"):  # released when the holder's block ends
        pass
