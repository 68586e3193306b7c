"""``bigtrain datasets gc``: old committed snapshots go, never the current one, the newest N, one a named checkpoint
was trained on, nor anything but a committed snapshot; never while a job holds the dataset's lock; and a removal
cut short leaves nothing a reader takes for a snapshot (without Spark: snapshots written as the jobs commit them)."""
from __future__ import annotations

import json
import shutil

import pytest

from core.paths import filesystem, join
from dataset import layout, snapshots
from jobs.common import dataset_lock
from jobs.datasets import main as datasets
from tests.dataset.test_staging import committed, plant, present


def checkpoint(folder, snapshot_id: str, name: str = "checkpoint.pt") -> None:
    """A checkpoint file and its sidecar, as ``training.checkpoint.save`` leaves them (gc reads only the sidecar)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    path.with_suffix(".json").write_text(json.dumps({"file": name, "bytes": 7, "sha256": "0" * 64,
                                                     "snapshot_id": snapshot_id}))


def test_gc_removes_only_committed_snapshots_older_than_the_newest_n_and_not_pinned(dataset_url, tmp_path, capsys):
    ids = [committed(dataset_url) for _ in range(5)]
    foreign = plant(dataset_url, "pinned-for-paper")
    staging = plant(dataset_url, "000009-20261130T020000Z")  # uncommitted, no marker: not provably abandoned
    run = tmp_path / "runs" / "cnn"
    checkpoint(run, ids[1])                                        # the final model of a training output folder
    checkpoint(run / "checkpoints", ids[0], "step-000010.pt")      # and one of its resume points
    sizes = {sid: snapshots.size(dataset_url, sid) for sid in ids}

    assert datasets(["gc", dataset_url, "--keep", "2", "--pinned-by", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"  would remove {ids[2]}  {sizes[ids[2]]} bytes" in out
    assert f"gc: would remove 1 snapshots, would free {sizes[ids[2]]} bytes" in out
    assert layout.snapshot_ids(dataset_url)[0] == ids

    assert datasets(["gc", dataset_url, "--keep", "2", "--pinned-by", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"  keep    {ids[4]}  current" in out and f"  keep    {ids[3]}  among the newest 2" in out
    assert f"  keep    {ids[1]}  pinned by {run / 'checkpoint.pt'}" in out
    assert f"  keep    {ids[0]}  pinned by {run / 'checkpoints' / 'step-000010.pt'}" in out
    assert f"  removed {ids[2]}  {sizes[ids[2]]} bytes" in out and f"freed {sizes[ids[2]]} bytes" in out
    assert layout.snapshot_ids(dataset_url) == ([ids[0], ids[1], ids[3], ids[4]], ["000009-20261130T020000Z"])
    assert present(foreign) and present(staging) and layout.resolve_snapshot(dataset_url).endswith(ids[4])
    fs, path = filesystem(join(dataset_url, layout.SNAPSHOTS_DIR))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) == sorted(
        [ids[0], ids[1], ids[3], ids[4], "000009-20261130T020000Z", "pinned-for-paper"])

    assert datasets(["gc", dataset_url, "--keep", "1", "--pinned-by", str(run / "checkpoint.pt")]) == 0
    assert layout.snapshot_ids(dataset_url)[0] == [ids[1], ids[4]]  # the current one stays whatever N is


def test_a_gc_cut_short_leaves_no_snapshot_a_reader_takes_and_the_next_gc_finishes_it(dataset_url, monkeypatch,
                                                                                     capsys):
    ids = [committed(dataset_url) for _ in range(3)]
    fs, _ = filesystem(dataset_url)
    real_rm = fs.rm

    def killed(*args, **kwargs):
        raise OSError("killed")

    def rm(path, recursive=False, **kwargs):  # the files after metadata.json
        return killed() if recursive else real_rm(path, recursive=recursive, **kwargs)

    if dataset_url.startswith("file:"):  # killed after the rename, before the folder is deleted
        monkeypatch.setattr(snapshots.shutil, "rmtree", killed)
    else:  # killed after metadata.json went, before the rest did
        monkeypatch.setattr(fs, "rm", rm)
    with pytest.raises(OSError, match="killed"):
        snapshots.remove(dataset_url, ids[0])
    monkeypatch.undo()
    assert layout.snapshot_ids(dataset_url)[0] == ids[1:]  # never listed as committed, never current
    left = snapshots.unfinished_removals(dataset_url)
    assert left == ([f".removing-{ids[0]}"] if dataset_url.startswith("file:") else [ids[0]])

    assert datasets(["gc", dataset_url, "--keep", "5"]) == 0
    assert f"  finished the removal of {left[0]} (left by an interrupted gc)" in capsys.readouterr().out
    assert snapshots.unfinished_removals(dataset_url) == [] and layout.snapshot_ids(dataset_url) == (ids[1:], [])
    assert not present(join(dataset_url, layout.SNAPSHOTS_DIR, left[0]))


def test_gc_waits_for_no_one_and_names_what_it_cannot_use(tmp_path, capsys):
    url = f"file://{tmp_path / 'ds'}"
    ids = [committed(url) for _ in range(3)]
    with dataset_lock(url):  # a preprocessing job writing the dataset
        assert datasets(["gc", url, "--keep", "1"]) == 75
    assert "is already running (lock" in capsys.readouterr().err and layout.snapshot_ids(url)[0] == ids
    assert datasets(["gc", url, "--keep", "1", "--pinned-by", str(tmp_path / "nowhere")]) == 2
    assert f"--pinned-by {tmp_path / 'nowhere'}: no bigtrain checkpoint there" in capsys.readouterr().err
    checkpoint(tmp_path / "notebook", None)
    assert datasets(["gc", url, "--keep", "1", "--pinned-by", str(tmp_path / "notebook")]) == 2
    assert "checkpoint.json: its checkpoint records no dataset snapshot" in capsys.readouterr().err
    assert datasets(["gc", join(url, layout.SNAPSHOTS_DIR, ids[0]), "--keep", "1"]) == 2
    assert f"is a snapshot folder: give its dataset ({url})" in capsys.readouterr().err
    assert layout.snapshot_ids(url)[0] == ids
    shutil.rmtree(tmp_path / "ds" / layout.SNAPSHOTS_DIR)
    assert datasets(["gc", url, "--keep", "1"]) == 1
    assert "holds no snapshots" in capsys.readouterr().err
