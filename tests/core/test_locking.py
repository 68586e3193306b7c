"""core.locking: a lock file planted as a link or a special file is refused (never truncated), and the lock file
bigtrain creates is private (0600)."""
from __future__ import annotations

import os
import stat

import pytest

from core import locking
from core.errors import EXIT_FAILED, LockFileError, LockHeld


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_left_untouched(tmp_path):
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("export PATH=$HOME/bin:$PATH\n")
    lock = tmp_path / "run" / ".bigtrain-train.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    with pytest.raises(LockFileError, match=f"lock file {lock} is a symbolic link"), locking.hold(str(lock), what="a run"):
        pass
    assert victim.read_text() == "export PATH=$HOME/bin:$PATH\n"
    assert LockFileError("x").exit_code == EXIT_FAILED


def test_a_dangling_symlink_is_refused_and_nothing_is_created_at_its_target(tmp_path):
    target = tmp_path / "elsewhere" / "new-file"
    target.parent.mkdir()
    lock = tmp_path / "lock"
    lock.symlink_to(target)
    with pytest.raises(LockFileError, match=f"lock file {lock} is a symbolic link"), locking.hold(str(lock), what="a run"):
        pass
    assert not target.exists()


def test_a_hard_link_to_another_file_is_refused_and_not_truncated(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    lock = tmp_path / "lock"
    os.link(victim, lock)
    with pytest.raises(LockFileError, match=f"lock file {lock} is a hard link"), locking.hold(str(lock), what="a run"):
        pass
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_a_folder_at_the_lock_path_is_refused_naming_it(tmp_path, kind):
    lock = tmp_path / "lock"
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    with pytest.raises(LockFileError, match=f"lock file {lock} is not a regular file"), locking.hold(str(lock), what="a run"):
        pass


def test_the_lock_file_is_created_0600_and_an_older_0644_one_is_made_0600(tmp_path):
    fresh, older = tmp_path / "fresh.lock", tmp_path / "older.lock"
    older.write_text("")
    older.chmod(0o644)
    old_umask = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        for lock in (fresh, older):
            with locking.hold(str(lock), what="pipeline x"):
                assert stat.S_IMODE(lock.stat().st_mode) == 0o600
                assert f'"pid": {os.getpid()}' in lock.read_text()
    finally:
        os.umask(old_umask)


def test_a_folder_the_lock_created_is_removed_when_nothing_else_was_written(tmp_path):
    out = tmp_path / "new" / "model"
    with pytest.raises(RuntimeError, match="refused"), locking.hold(str(out / ".lock"), what="a run"):
        raise RuntimeError("refused before writing anything")
    assert not out.exists() and (tmp_path / "new").is_dir()  # only the folder the lock made goes
    with locking.hold(str(out / ".lock"), what="a run"):
        (out / "metrics.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "metrics.json"]  # a run that wrote keeps its folder
    existing = tmp_path / "existing"
    existing.mkdir()
    with locking.hold(str(existing / ".lock"), what="a run"):
        pass
    assert existing.is_dir() and not any(existing.iterdir())  # a folder that was there stays, without the lock


def test_a_folder_holding_only_the_lock_of_a_killed_run_is_removed_by_the_next_run_that_writes_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core import locking\n"
                               f"with locking.hold({str(out / '.lock')!r}, what='a run'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)  # its clean-up never runs: the folder is left holding only the lock
    holder.wait(timeout=30)
    assert [p.name for p in out.iterdir()] == [".lock"]
    with pytest.raises(RuntimeError, match="refused"), locking.hold(str(out / ".lock"), what="a run"):
        raise RuntimeError("refused before writing anything")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), locking.hold(str(existing / ".lock"), what="a run"):
        raise RuntimeError("refused")
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]  # the user's folder stays, without the lock


def test_a_lock_removed_by_its_holder_between_open_and_flock_is_not_taken(tmp_path, monkeypatch):
    """The holder unlinks the lock while still holding it; a process that opened the old file meanwhile must back
    off rather than hold a lock nobody else can see."""
    lock = tmp_path / "lock"
    real_open = locking._open_lock_file

    def open_then_lose_the_name(path):
        fd = real_open(path)
        os.unlink(path)  # what the holder's cleanup does just after our open
        return fd

    monkeypatch.setattr(locking, "_open_lock_file", open_then_lose_the_name)
    with pytest.raises(LockHeld, match="has just ended .* try again"), locking.hold(str(lock), what="a run"):
        pass


def test_a_forked_child_does_not_keep_the_lock_after_its_parent_lets_go(tmp_path):
    """A lock is released when its holder closes it even if the holder forked children that live on (the
    loader's worker processes): the children close their copies at the fork."""
    import multiprocessing

    lock = tmp_path / "out" / ".lock"
    lock.parent.mkdir()
    (lock.parent / "metrics.json").write_text("{}")  # a folder with outputs: the lock file stays between runs
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    with locking.hold(str(lock), what="a run"):
        child = context.Process(target=_wait_for, args=(ready, stop), daemon=True)
        child.start()
        ready.wait(10)
    try:
        with locking.hold(str(lock), what="the next run"):  # the child still runs
            assert child.is_alive()
    finally:
        stop.set()
        child.join(10)


def _wait_for(ready, stop):
    ready.set()
    stop.wait(30)
