"""An exclusive lock on a local file (``fcntl.flock``): the kernel drops it when its holder dies, even by SIGKILL,
so a crashed run never leaves a stale lock behind.

The lock file is opened without following a symbolic link and used only when it is a regular file with one link,
mode 0600: a link planted at the lock's name (``.bigtrain-train.lock -> ~/.bashrc``) is refused, never truncated.

A forked child (the training loader's worker processes) closes its copies of the held locks at once: an flock
belongs to the open file, shared across a fork, so a child that outlived its killed parent would otherwise keep
the run's output locked.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterator

from core import atomic
from core.errors import LockFileError, LockHeld

MODE = 0o600
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


@contextlib.contextmanager
def hold(path: str, *, what: str, remove: bool = False) -> Iterator[None]:
    """Hold ``path`` exclusively for the ``with`` block, or raise LockHeld at once (never wait); LockFileError when
    ``path`` is not a lock file bigtrain may write (a link, a folder, a FIFO, a device). When the block ends having
    added nothing to the lock's folder (a run refused or failed before it wrote anything), the lock file goes, and
    so does the folder if this call created it or found only a lock there (left by a run killed with SIGKILL, whose
    own clean-up never ran); with ``remove`` the lock file always goes (a lock beside an output, not inside it).
    Either happens while the lock is still held."""
    import fcntl

    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    found = os.listdir(folder) if os.path.isdir(folder) else None
    before = set(found or ()) - {name}
    created = found is None or found == [name]  # made here, or holding only a killed run's lock
    os.makedirs(folder, exist_ok=True)
    fd = _open_lock_file(path)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "unknown"
            raise LockHeld(f"{what} is already running (lock {path} held by {holder})", path=path,
                           holder=_parse_holder(holder)) from None
        if not _names(path, fd):  # its holder removed it (see below) between our open and our flock
            raise LockHeld(f"{what} was running and has just ended (lock {path} was removed): try again", path=path,
                           holder={})
        held = True
        _HELD.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        yield
    finally:
        unchanged = held and set(os.listdir(folder)) - {name} == before and _names(path, fd)
        if unchanged or (held and remove and _names(path, fd)):
            os.unlink(path)  # still locked: a process that opened it meanwhile finds it unnamed and backs off
        if unchanged and created:
            with contextlib.suppress(OSError):  # something written there meanwhile keeps it
                os.rmdir(folder)
        _HELD.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _open_lock_file(path: str) -> int:
    """A descriptor of the regular file at ``path`` (created 0600 when missing), opened without following a
    link and without blocking (``atomic.open_regular``); LockFileError naming the path else."""
    try:
        fd = atomic.open_regular(path, os.O_RDWR | os.O_CREAT, MODE)
    except atomic.NotRegular as exc:
        raise LockFileError(f"lock file {path} is {exc.problem}: refusing to use it as a lock (bigtrain truncates its "
                            "lock file, or the file a link points to); remove it") from None
    info = os.fstat(fd)
    if stat.S_IMODE(info.st_mode) != MODE and info.st_uid == os.geteuid():
        os.fchmod(fd, MODE)  # a lock file of an older bigtrain (0644): the holder's pid and host are not for all
    return fd


def _parse_holder(text: str) -> dict:
    """The holder's {"pid", "host", "since"}, or {} when the lock file holds something else."""
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
