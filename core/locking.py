"""An exclusive lock on a local file (``fcntl.flock``): the kernel drops it when its holder dies, even by SIGKILL,
so a crashed run never leaves a stale lock behind."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Iterator

from core.errors import LockHeld


@contextlib.contextmanager
def hold(path: str, *, what: str) -> Iterator[None]:
    """Hold ``path`` exclusively for the ``with`` block, or raise LockHeld at once (never wait)."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "unknown"
            raise LockHeld(f"{what} is already running (lock {path} held by {holder})", path=path,
                           holder=_parse_holder(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _parse_holder(text: str) -> dict:
    """The holder's {"pid", "host", "since"}, or {} when the lock file holds something else."""
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
