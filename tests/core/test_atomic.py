"""core.atomic: a file is replaced whole or not at all, and no temporary file is left behind."""
from __future__ import annotations

import json
import os

import pytest

from core import atomic


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic.write_json(target, {"b": 1, "a": "é"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    assert target.read_text(encoding="utf-8").index('"a"') < target.read_text(encoding="utf-8").index('"b"')
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


@pytest.mark.parametrize("step", ["replace", "fsync"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, step):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, step, disk_full)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def record(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    atomic.write_text(tmp_path / "stages.json", "one")
    atomic.write_text(tmp_path / "stages.json", "two")
    assert len(set(seen)) == 2 and all(n.startswith(".stages.json.") and n.endswith(".tmp") for n in seen)
    assert (tmp_path / "stages.json").read_text() == "two"


def test_file_urls_and_paths_are_the_same_target(tmp_path):
    atomic.write_text("file://" + str(tmp_path / "a.txt"), "one")
    atomic.write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]


def test_a_folder_swap_interrupted_between_its_moves_is_recovered(tmp_path, monkeypatch):
    import fsspec

    from core import atomic

    fs = fsspec.filesystem("file")
    target, staging = tmp_path / "out", tmp_path / ".out.tmp"
    for folder, text in ((target, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "part").write_text(text)
    real_mv = fs.mv
    calls = []

    def mv_then_die(src, dst, **kw):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("killed between the moves")
        return real_mv(src, dst, **kw)

    monkeypatch.setattr(fs, "mv", mv_then_die)
    try:
        atomic.replace_folder(fs, str(staging), str(target), aside="old")
    except OSError:
        pass
    assert not target.exists() and (tmp_path / ".out.old" / "part").read_text() == "old"
    monkeypatch.setattr(fs, "mv", real_mv)
    atomic.recover_folder(fs, str(target), aside="old")
    assert (target / "part").read_text() == "old" and not (tmp_path / ".out.old").exists()
    atomic.replace_folder(fs, str(staging), str(target), aside="old")
    assert (target / "part").read_text() == "new" and not staging.exists() and not (tmp_path / ".out.old").exists()


def test_appends_go_to_a_regular_file_and_never_through_a_link(tmp_path):
    from core.errors import UnsafeFileError

    log = tmp_path / "history.jsonl"
    for line in (b"one\n", b"two\n"):
        with atomic.open_append(log) as fh:
            fh.write(line)
    assert log.read_bytes() == b"one\ntwo\n"
    victim = tmp_path / "victim.sh"
    victim.write_bytes(b"echo hi\n")
    planted = tmp_path / "metrics.jsonl"
    planted.symlink_to(victim)
    with pytest.raises(UnsafeFileError, match=r"metrics\.jsonl is a symbolic link"):
        atomic.open_append(planted)
    hard = tmp_path / "hard.jsonl"
    os.link(victim, hard)
    with pytest.raises(UnsafeFileError, match=r"hard\.jsonl is a hard link \(2 names"):
        atomic.open_append(hard)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafeFileError, match="fifo is not a regular file"):
        atomic.open_append(tmp_path / "fifo")
    assert victim.read_bytes() == b"echo hi\n"


def test_temporaries_of_dead_writers_of_this_host_go_at_the_next_write_into_their_folder(tmp_path, monkeypatch):
    import re
    import socket

    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(os.path.basename(src)), real_replace(src, dst)))
    atomic.write_bytes(tmp_path / "checkpoint.pt", b"one")
    monkeypatch.undo()
    mine = re.fullmatch(r"\.checkpoint\.pt\.(\d+)~(\d*)@(.+)-[0-9a-f]{8}\.tmp", seen[0])
    assert mine and mine[1] == str(os.getpid()) and mine[3] == re.sub(r"[^\w.-]", "_", socket.gethostname())
    gone = 4_194_305  # above the kernel's largest pid (PID_MAX_LIMIT): never a live process

    def planted(pid=gone, space=mine[2], host=mine[3]) -> str:
        name = f".checkpoint.pt.{pid}~{space}@{host}-0badc0de.tmp"
        (tmp_path / name).write_bytes(b"half a checkpoint")
        return name

    dead = planted()
    kept = {planted(pid=os.getppid()),                          # a live writer's
            planted(host="another-host.example"),               # another host's: its pids mean nothing here
            planted(space=mine[2] + "1"),                       # another pid namespace (a container) of this host
            ".notes.tmp", f".checkpoint.pt.{gone}-0badc0de.tmp"}  # not named by a writer of this bigtrain
    (tmp_path / ".notes.tmp").write_bytes(b"")
    (tmp_path / f".checkpoint.pt.{gone}-0badc0de.tmp").write_bytes(b"")
    atomic.write_bytes(tmp_path / "checkpoint.pt", b"two")
    assert set(os.listdir(tmp_path)) == kept | {"checkpoint.pt"} and dead not in kept
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"two"


def test_uninterrupted_holds_ctrl_c_until_the_writes_are_done_then_delivers_it(tmp_path):
    import signal

    from core import atomic

    done = []
    session = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test session's Spark installs its own
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic.uninterrupted():
                signal.raise_signal(signal.SIGINT)  # Ctrl-C between the checkpoint and its sidecar
                atomic.write_bytes(tmp_path / "step.pt", b"weights")
                atomic.write_json(tmp_path / "step.json", {"bytes": 7})
                done.append("both written")
        assert done == ["both written"] and (tmp_path / "step.json").is_file()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, session)
