"""The one way bigtrain replaces a file: write a temporary file beside it, flush and fsync it, rename it over the
target, and fsync the folder (local file systems), so a reader or a crash sees the old file or the new one, never
half of one. Object stores (s3://, ...) publish an object whole when its upload completes; other remote stores
(HDFS) are written in place. ``make_durable`` does the same fsyncs for files written by others (Spark's splits)."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from core import paths

TMP_SUFFIX = ".tmp"


def tmp_name(name: str) -> str:
    """The temporary name a file is written under: hidden and ending in .tmp, so listings and manifests skip it
    (``write_bytes`` adds the writer's pid and a random part to ``name``, so two writers never share one)."""
    return f".{name}{TMP_SUFFIX}"


def write_bytes(target: str | Path, data: bytes) -> None:
    """Replace ``target`` (a local path or a URL) with ``data``, atomically."""
    local = paths.local_path(str(target))
    if local is None:
        fs, path = paths.filesystem(str(target))
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    path = Path(local)
    tmp = path.with_name(tmp_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}"))  # one per writer
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


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """``data`` as JSON (UTF-8, non-ASCII kept as it is), atomically."""
    write_text(target, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False))


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
