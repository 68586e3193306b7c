"""The one way bigtrain replaces a file: write a temporary file beside it, flush and fsync it, rename it over the
target, and fsync the folder (local file systems), so a reader or a crash sees the old file or the new one, never
half of one. Object stores (s3://, ...) publish an object whole when its upload completes; other remote stores
(HDFS) are written in place. ``make_durable`` does the same fsyncs for files written by others (Spark's splits).

A temporary name says who writes it (``.NAME.<pid>~<pid namespace>@<host>-<random>.tmp``). A writer killed
between its write and its rename (SIGKILL, a power loss) leaves its temporary file behind; the next atomic write
into the same folder removes those whose writer is provably gone: a process of this host and pid namespace that
no longer exists. Another host's temporary files, and those of live processes, are left alone."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import socket
import signal
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

from core import paths
from core.errors import UnsafeFileError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
# what write_bytes adds to a file's name: the writer (pid, pid namespace, host) and a random part
_WRITER_TMP = re.compile(r"^\..+\.(?P<pid>\d+)~(?P<space>\d*)@(?P<host>[\w.-]+)-[0-9a-f]{8}\.tmp$")


def tmp_name(name: str) -> str:
    """The temporary name a file is written under: hidden and ending in .tmp, so listings and manifests skip it
    (``write_bytes`` adds its writer and a random part to ``name``, so two writers never share one)."""
    return f".{name}{TMP_SUFFIX}"


def _writer() -> tuple[str, str, str]:
    """(pid, pid namespace, host) of this process: enough to tell later whether the process that wrote a temporary
    file is gone (the namespace is empty where /proc is missing; the host name keeps only letters, digits, ``.-_``)."""
    try:
        space = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        space = ""
    return str(os.getpid()), space, re.sub(r"[^\w.-]", "_", socket.gethostname())


def remove_dead_writers_temporaries(folder: Path) -> None:
    """Remove the temporary files in ``folder`` that writers of this host and pid namespace left when they died
    (killed between write and rename); never one of another host, of a live process, or of another name."""
    pid, space, host = _writer()
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.endswith(TMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        found = _WRITER_TMP.match(name)
        if not found or (found["space"], found["host"]) != (space, host) or found["pid"] == pid:
            continue
        try:
            os.kill(int(found["pid"]), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue  # alive (another user's), or no pid at all
        log.info("removing %s: its writer, pid %s on this host, is gone", folder / name, found["pid"])
        try:
            (folder / name).unlink()
        except OSError:
            pass  # removed meanwhile, or not ours to remove


def write_bytes(target: str | Path, data: bytes) -> None:
    """Replace ``target`` (a local path or a URL) with ``data``, atomically."""
    local = paths.local_path(str(target))
    if local is None:
        fs, path = paths.filesystem(str(target))
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    path = Path(local)
    pid, space, host = _writer()
    tmp = path.with_name(tmp_name(f"{path.name}.{pid}~{space}@{host}-{secrets.token_hex(4)}"))  # one per writer
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file stays as it was, and no half-written one is left beside it
        raise
    fsync_folder(path.parent)
    remove_dead_writers_temporaries(path.parent)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """``data`` as JSON (UTF-8, non-ASCII kept as it is), atomically."""
    write_text(target, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False))


class NotRegular(Exception):
    """A path that bigtrain writes through only when it names a regular file of one name: ``problem`` says what it
    is instead (a symbolic link, a hard link, not a regular file)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def open_regular(path: str | Path, flags: int, mode: int) -> int:
    """A descriptor of the regular file with one name at ``path`` (``flags`` plus no following of a link and no
    blocking: a FIFO would otherwise wait for its other end); NotRegular else. A link planted at the name of a file
    bigtrain writes (a lock, a log it appends to) would have it write the file the link points to."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular("a symbolic link") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise NotRegular(f"not a regular file ({exc.strerror})") from None
        raise
    info = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(info.st_mode)
               else f"a hard link ({info.st_nlink} names for one file)" if info.st_nlink != 1 else None)
    if problem:
        os.close(fd)
        raise NotRegular(problem)
    return fd


def open_append(path: str | Path):
    """``path`` opened to append bytes (created 0644 when missing), never through a symbolic link, a hard link or
    anything but a regular file (``open_regular``); UnsafeFileError names the path."""
    try:
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except NotRegular as exc:
        raise UnsafeFileError(f"{path} is {exc.problem}: refusing to append to it (it could change another file); "
                              "remove it") from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def make_durable(root: str, relpaths: list[str]) -> None:
    """fsync files another writer (Spark) wrote below ``root`` (a URL or local path), and their folders up to
    ``root``: done before a commit marker is written, so a power loss never leaves a marker naming lost files.
    Nothing to do on object stores, where an object is durable once its upload completes."""
    local = paths.local_path(str(root))
    if local is None:
        return
    folders = {Path(local)}
    for rel in relpaths:
        file = Path(local) / rel
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.update(p for p in file.parents if p.is_relative_to(local))
    for folder in sorted(folders, reverse=True):  # deepest first: each entry is durable before its parent's
        fsync_folder(folder)


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power loss after os.replace could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a folder we may write to but not open
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and platforms) do not fsync directories
    finally:
        os.close(fd)


def sibling(path: str, role: str) -> str:
    """``.NAME.<role>`` in the folder of ``path`` (a path or a URL): hidden, so listings and readers skip it."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.{role}"


def replace_folder(fs, staging: str, target: str, *, aside: str) -> None:
    """Swap the checked folder ``staging`` in for ``target`` (paths of the fsspec ``fs``): the earlier folder is
    moved to ``sibling(target, aside)``, the new one in, then the earlier one deleted. A crash in between leaves the
    earlier folder aside, which ``recover_folder`` puts back. Two renames on a local file system; on object storage
    each move is a copy and a delete, so the swap is not atomic there."""
    old = sibling(target, aside)
    if fs.exists(target):
        fs.mv(target, old, recursive=True)
    fs.mv(staging, target, recursive=True)
    if fs.exists(old):
        fs.rm(old, recursive=True)


def recover_folder(fs, target: str, *, aside: str) -> None:
    """Put back an earlier folder that a ``replace_folder`` interrupted between its moves left aside (or delete it
    when the new one is already in place)."""
    old = sibling(target, aside)
    if not fs.exists(old):
        return
    if fs.exists(target):
        fs.rm(old, recursive=True)
    else:
        log.warning("putting back %s, which an interrupted run left aside", target)
        fs.mv(old, target, recursive=True)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM held off until the block ends, then delivered: a group of writes that belong
    together (a checkpoint and its sidecar) is done whole, so a stop never costs the point being saved. Only the
    main thread receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])  # to the handler that was there: KeyboardInterrupt, the run's stop
