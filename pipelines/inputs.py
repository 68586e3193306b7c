"""The input files of a job: one listing, read by bigtrain in the Python workers, never by Hadoop's file sources.

Why not Spark's file sources: the JVM names files in its locale (under cron's ``LC_ALL=C`` an accented name is
skipped without a word), cannot name a file whose name is not UTF-8, fails the whole job on a colon in a name
(Hadoop's ``Path``), follows symbolic links (a loop multiplies the rows, a link can read any file on the machine)
and fails the whole job on one truncated ``.gz``. Here:

* ``list_files`` walks the input once on the driver, local names as bytes (``os.scandir``), other stores through
  fsspec. Every entry it finds is an ``Entry`` (path, relative path, size, modification time) and, where the file
  cannot be read as an input, the reason (``problem``): a name that is not UTF-8, a symbolic link
  (``follow_links: false``, the default) or one leading out of the input, a file reached twice, a special file.
  Such entries are inputs like any other: they are counted, diffed by incremental runs, and become rejected records
  with their reason when read. Names starting with ``.`` or ``_`` are hidden (Hadoop's rule, which keeps
  ``_SUCCESS`` and ``.crc`` files out), and counted in the log.
* ``open_input`` opens one listed file in a worker (plain, ``.gz`` or ``.bz2``), ``read_bytes`` reads one whole with
  a cap, ``lines`` streams a text file's lines with memory bounded by ``max_record_bytes`` (ends ``\\n`` or
  ``\\r\\n``; a lone ``\\r``, which Hadoop's reader also took for a line end, is not one), and ``parquet_rows`` a
  Parquet file's rows as JSON objects. Each file's failure is the file's reject, never the
  job's.
"""
from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import logging
import os
import stat
import time
import zlib
from dataclasses import dataclass
from typing import IO, Iterator

from core.paths import join, local_path, normalise_url

log = logging.getLogger(__name__)

HIDDEN_PREFIXES = (".", "_")          # Hadoop's hidden files: _SUCCESS, _metadata, .crc, .DS_Store
COPYING_SUFFIX = "._COPYING_"         # a file `hdfs dfs -put` is still writing
LINK = "symbolic link: not followed (follow_links is false)"
READ_CHUNK = 1 << 20
LIST_THREADS = 8                      # threads listing the folders below an input root (``list_files``)
SLOW_LISTING = 50e-6                  # seconds an entry above which the listing is worth those threads
BOM = b"\xef\xbb\xbf"                 # UTF-8's byte order mark


@dataclass(frozen=True)
class Entry:
    path: str                 # the URL the workers open: file:/a/b c.png (core.paths' one spelling), s3a://b/k
    relpath: str              # below the input root; a name that is not UTF-8 has its bytes as \\xNN
    size: int
    mtime: int                # milliseconds
    problem: str | None = None  # why the entry is not read as an input (a reject when it is read)


@dataclass
class Listing:
    root: str                 # the folder relative paths start at
    entries: list[Entry]
    hidden: int = 0


def capped(entries: list[Entry], max_bytes: int, key: str) -> list[Entry]:
    """``entries`` with the files larger than ``max_bytes`` (the config key ``key``) rejected unread."""
    return [dataclasses.replace(e, problem=f"file too large: {e.size} bytes, more than {key} {max_bytes}")
            if e.problem is None and e.size > max_bytes else e for e in entries]


def input_root(input_url: str) -> str:
    """The folder records and files are relative to: the input folder, or the input file's folder."""
    path = local_path(input_url)
    if path is not None:
        return input_url if not os.path.isfile(path) else input_url.rsplit("/", 1)[0]
    import fsspec

    fs, inner = fsspec.core.url_to_fs(input_url)
    return input_url if fs.isdir(inner) else input_url.rsplit("/", 1)[0]


def list_files(input_url: str, *, follow_links: bool = False) -> Listing:
    """Every file below ``input_url`` (or the one file it names), hidden names left out."""
    path = local_path(input_url)
    if path is None:
        return _list_remote(input_url)
    root_path = path if os.path.isdir(path) else os.path.dirname(path)
    listing = Listing(root=input_root(input_url), entries=[])
    walker = _LocalWalk(listing, os.fsencode(root_path), follow_links=follow_links)
    if os.path.isdir(path):
        if not walker.walk_parallel(os.fsencode(path)):
            listing = Listing(root=listing.root, entries=[])
            walker = _LocalWalk(listing, os.fsencode(root_path), follow_links=follow_links)
            walker.walk(os.fsencode(path), b"")
    else:
        walker.entry(os.fsencode(path), os.fsencode(os.path.basename(path)))
    walker.links()
    listing.entries.sort(key=lambda e: e.relpath)
    if listing.hidden:
        log.info("%d hidden files and folders below %s not read (names starting with . or _)", listing.hidden,
                 input_url)
    return listing


def _hidden(name: bytes) -> bool:
    return name.startswith((b".", b"_")) or name.endswith(COPYING_SUFFIX.encode())


def _text(name: bytes) -> tuple[str, bool]:
    """(the name as text, whether it is valid UTF-8); invalid bytes appear as \\xNN."""
    try:
        return name.decode("utf-8"), True
    except UnicodeDecodeError:
        return name.decode("utf-8", errors="backslashreplace"), False


class _LocalWalk:
    """A walk of a local tree with names as bytes (a stack, not recursion: any depth); links followed only when
    asked, only inside the root, and after the walk, so that a file's own name wins over a link's and a file or
    folder reached through links is read once. Hard links are files of their own, as they always were."""

    def __init__(self, listing: Listing, root: bytes, *, follow_links: bool):
        self.listing, self.follow = listing, follow_links
        self.root = os.path.realpath(root)
        self.seen_folders: set[tuple[int, int]] = set()
        self.seen_files: dict[tuple[int, int], bytes] = {}  # a file's first name, decoded when a link names it
        self.followed: list[tuple[bytes, bytes, os.stat_result]] = []
        self.folders: list[tuple[bytes, bytes]] = []
        self.prefix = normalise_url(listing.root).rstrip("/") + "/"

    def walk(self, path: bytes, rel: bytes) -> None:
        self.folders.append((path, rel))
        while self.folders:
            self.folder(*self.folders.pop())

    def walk_parallel(self, path: bytes) -> bool:
        """``walk(path, b"")`` with the folders below the root walked each into a walker of its own, by a pool of
        threads when the storage is slow (``os.scandir`` and ``os.lstat`` wait on an NFS mount or a cold disk
        without the GIL), merged in the order ``walk`` visits them (the stack pops the last folder first), so the
        entries, the file a link names as "the same file as" and the order links are followed in are ``walk``'s.
        The first folder is walked here and timed: at under ``SLOW_LISTING`` seconds an entry (the files are in
        the page cache) the rest are walked here too, since threads then only contend for the GIL (64,000 cached
        files: 0.44-0.50 s in one thread, 0.74-0.87 s in 8). False (nothing listed: walk again in one thread)
        when two walks met the same folder (a bind mount), which ``walk`` would have read once."""
        self.folder(path, b"")
        tops, self.folders = self.folders, []
        if len(tops) < 2:
            self.folders = tops
            while self.folders:
                self.folder(*self.folders.pop())
            return True
        from concurrent.futures import ThreadPoolExecutor

        def walk_one(top: tuple[bytes, bytes]) -> _LocalWalk:
            sub = _LocalWalk(Listing(root=self.listing.root, entries=[]), b"", follow_links=self.follow)
            sub.root, sub.prefix = self.root, self.prefix
            sub.walk(*top)
            return sub

        start = time.perf_counter()
        subs = [walk_one(tops.pop())]
        if time.perf_counter() - start < SLOW_LISTING * max(len(subs[0].listing.entries), 1):
            subs += [walk_one(top) for top in tops[::-1]]
        else:
            with ThreadPoolExecutor(min(LIST_THREADS, len(tops))) as pool:
                subs += pool.map(walk_one, tops[::-1])
        for sub in subs:
            if sub.seen_folders & self.seen_folders:
                return False
            self.seen_folders |= sub.seen_folders
            for key, name in sub.seen_files.items():
                self.seen_files.setdefault(key, name)
            self.followed += sub.followed
            self.listing.entries += sub.listing.entries
            self.listing.hidden += sub.listing.hidden
        return True

    def folder(self, path: bytes, rel: bytes) -> None:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in self.seen_folders:
            return
        self.seen_folders.add((st.st_dev, st.st_ino))
        try:
            children = sorted(os.scandir(path), key=lambda d: d.name)
        except OSError as exc:
            self.add(rel or b".", None, f"unreadable folder: {exc.strerror or exc}")
            return
        base, entries, prefix = rel + b"/" if rel else b"", self.listing.entries, self.prefix
        for child in children:
            name = child.name
            if _hidden(name):
                self.listing.hidden += 1
                continue
            if not self.follow:  # the common case, ``entry`` inlined: a regular file with a UTF-8 name
                try:
                    st, relpath = os.lstat(child.path), (base + name).decode("utf-8")  # lstat: DirEntry.stat is slower
                except (OSError, UnicodeDecodeError):
                    st = None
                if st is not None and stat.S_ISREG(st.st_mode):
                    entries.append(Entry(prefix + relpath, relpath, st.st_size, st.st_mtime_ns // 1_000_000))
                    continue
            self.entry(child.path, base + name)

    def entry(self, path: bytes, rel: bytes) -> None:
        try:
            st = os.lstat(path)
        except OSError as exc:  # vanished while listing
            self.add(rel, None, f"unreadable: {exc.strerror or exc}")
            return
        if stat.S_ISLNK(st.st_mode):
            self.link(path, rel, st)
        elif stat.S_ISDIR(st.st_mode):
            self.folders.append((path, rel))
        else:
            self.file(rel, st)

    def link(self, path: bytes, rel: bytes, st: os.stat_result) -> None:
        if not self.follow:
            self.add(rel, st, LINK)
        else:
            self.followed.append((path, rel, st))

    def links(self) -> None:
        """Follow the links met, once the real files and folders are known (more may be met on the way)."""
        while self.followed:
            self.follow_link(*self.followed.pop(0))
            while self.folders:
                self.folder(*self.folders.pop())

    def follow_link(self, path: bytes, rel: bytes, st: os.stat_result) -> None:
        target = os.path.realpath(path)
        if os.path.commonpath([target, self.root]) != self.root:
            self.add(rel, st, "symbolic link: leads out of the input folder (not read)")
            return
        try:
            target_st = os.stat(path)
        except OSError:
            self.add(rel, st, "symbolic link: dangling (its target does not exist)")
            return
        if stat.S_ISDIR(target_st.st_mode):
            if (target_st.st_dev, target_st.st_ino) in self.seen_folders:
                self.add(rel, st, "symbolic link: to a folder already read (a loop or a second way in)")
            else:
                self.folders.append((path, rel))
        elif (target_st.st_dev, target_st.st_ino) in self.seen_files:
            first = _text(self.seen_files[target_st.st_dev, target_st.st_ino])[0]
            self.add(rel, st, f"symbolic link: the same file as {first} (read once)")
        else:
            self.file(rel, target_st)

    def file(self, rel: bytes, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            self.add(rel, st, "not a regular file: a device, pipe or socket")
            return
        if self.follow:  # only a link followed asks which name a file had first
            self.seen_files.setdefault((st.st_dev, st.st_ino), rel)
        self.add(rel, st, None)

    def add(self, rel: bytes, st: os.stat_result | None, problem: str | None) -> None:
        relpath, valid = _text(rel)
        if not valid and problem is None:
            problem = "file name is not valid UTF-8: rename it to read it"
        size, mtime = (st.st_size, st.st_mtime_ns // 1_000_000) if st is not None else (0, 0)
        self.listing.entries.append(Entry(self.prefix + relpath, relpath, size, mtime, problem))


def _find(fs, inner: str) -> dict[str, dict]:
    """``fs.find(inner, detail=True)``, the folders at the top of ``inner`` each found by a thread of a pool (an
    object store answers a listing request with 1,000 keys: one after the other, a large tree is thousands of
    round trips); the same files, the folders' and those at the top."""
    top = fs.ls(inner, detail=True)
    folders = sorted(info["name"] for info in top if info.get("type") == "directory")
    if len(folders) < 2:
        return fs.find(inner, detail=True)
    from concurrent.futures import ThreadPoolExecutor

    found = {info["name"]: info for info in top if info.get("type") != "directory"}
    with ThreadPoolExecutor(min(LIST_THREADS, len(folders))) as pool:
        for part in pool.map(lambda folder: fs.find(folder, detail=True), folders):
            found.update(part)
    return found


def _list_remote(input_url: str) -> Listing:
    """Object stores and HDFS through fsspec: keys are UTF-8 and there are no links."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(input_url)
    root = input_root(input_url)
    found = _find(fs, inner) if fs.isdir(inner) else {inner: fs.info(inner)}
    listing = Listing(root=root, entries=[])
    base = fsspec.core.url_to_fs(root)[1].rstrip("/") + "/"
    for name, info in sorted(found.items()):
        rel = name[len(base):] if name.startswith(base) else os.path.basename(name)
        if any(_hidden(part.encode()) for part in rel.split("/")):
            listing.hidden += 1
            continue
        mtime = info.get("mtime") or info.get("LastModified") or 0
        mtime = int(mtime.timestamp() * 1000) if hasattr(mtime, "timestamp") else int(float(mtime) * 1000)
        listing.entries.append(Entry(join(root, rel), rel, int(info.get("size") or 0), mtime))
    if listing.hidden:
        log.info("%d hidden files below %s not read (names starting with . or _)", listing.hidden, input_url)
    return listing


# ---- reading, in the workers ------------------------------------------------------------------------------------

class UnreadableFile(Exception):
    """A listed file that cannot be read; its message becomes the reject reason."""


def _raw(path: str) -> IO[bytes]:
    local = local_path(path)
    try:
        if local is not None:
            return _open_regular(local.encode("utf-8", errors="surrogateescape"))
        import fsspec

        return fsspec.open(path, "rb").open()
    except FileNotFoundError:
        raise UnreadableFile("unreadable file: vanished after it was listed") from None
    except OSError as exc:
        raise UnreadableFile(f"unreadable file: {exc.strerror or exc}") from None


def _open_regular(path: bytes) -> IO[bytes]:
    """A local file opened for reading only if it is still the regular file the listing saw: a name swapped for a
    link or a pipe after the listing is neither followed nor waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFile("unreadable file: no longer a regular file (replaced after it was listed)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


COMPRESSIONS = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File}
UNSUPPORTED_COMPRESSIONS = (".zst", ".lz4", ".snappy", ".deflate", ".xz", ".zip")


def open_input(path: str) -> IO[bytes]:
    """A listed file opened for reading its content: ``.gz`` and ``.bz2`` decompressed as they are read."""
    ext = os.path.splitext(path)[1].lower()
    if ext in UNSUPPORTED_COMPRESSIONS:
        raise UnreadableFile(f"unsupported compression: {ext} (use .gz or .bz2, or none)")
    raw = _raw(path)
    opener = COMPRESSIONS.get(ext)
    if opener is None:
        return raw
    if not raw.read(1):  # an empty .gz or .bz2 (a failed upload) decompresses to nothing without an error
        raw.close()
        raise UnreadableFile(f"corrupt or truncated file: an empty {ext} file")
    raw.seek(0)
    return opener(fileobj=raw) if opener is gzip.GzipFile else opener(raw)


def failure(exc: Exception) -> str:
    """The reason a file failed part way, in a stable form (no object addresses)."""
    if isinstance(exc, UnreadableFile):
        return str(exc)
    if isinstance(exc, (EOFError, gzip.BadGzipFile, OSError, zlib.error)) and not isinstance(exc, FileNotFoundError):
        return f"corrupt or truncated file: {type(exc).__name__}: {exc}"
    return f"unreadable file: {type(exc).__name__}: {exc}"


def read_bytes(path: str, max_bytes: int | None) -> bytes:
    """A whole file's bytes, never more than ``max_bytes`` held (UnreadableFile when it holds more: it grew).
    A read asks for the file's size and a byte more where the size is known, then for the rest up to the cap
    only when that byte came (the file grew since): a read of ``max_bytes + 1`` makes room for that many bytes
    first, 256 MiB for a 3 KB image (33 us a file, where reading it takes 11, and 90 us an image in all)."""
    with _raw(path) as f:
        if max_bytes is None:
            return f.read()
        size = _size_of(f)
        data = f.read(max_bytes + 1 if size is None else min(size, max_bytes) + 1)
        if size is not None and len(data) > size and len(data) <= max_bytes:
            data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise UnreadableFile(f"file too large: more than max_file_bytes {max_bytes} bytes")
    return data


def _size_of(f: IO[bytes]) -> int | None:
    """The size of an open file (a local file's ``fstat``, an fsspec file's ``size``), None when it has none."""
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        size = getattr(f, "size", None)
        return size if isinstance(size, int) else None


@dataclass(frozen=True)
class Line:
    number: int               # 1-based, in the file
    raw: bytes                # without its line break; only the start of a line over the limit
    length: int               # the line's length in bytes (all of it, also when cut)


def lines(f: IO[bytes], max_bytes: int | None, keep: int) -> Iterator[Line]:
    """The lines of a binary stream (ends ``\\n`` or ``\\r\\n``); a line longer than ``max_bytes`` is measured while
    it is skipped, and only its first ``keep`` bytes are held: no line is ever held whole beyond the cap."""
    limit = max_bytes + 2 if max_bytes is not None else -1
    reader = io.BufferedReader(f, READ_CHUNK) if not isinstance(f, io.BufferedIOBase) else f
    number = 0
    while True:
        chunk = reader.readline(limit)
        if not chunk:
            return
        number += 1
        if number == 1 and chunk.startswith(BOM):  # skipped, as Hadoop's line reader does
            chunk = chunk[len(BOM):]
        if chunk.endswith(b"\n") or max_bytes is None or len(chunk) < limit:
            body = chunk[:-2] if chunk.endswith(b"\r\n") else chunk.rstrip(b"\n")
            if max_bytes is None or len(body) <= max_bytes:
                yield Line(number, body, len(body))
                continue
        length, head = len(chunk), chunk[:keep]
        if chunk.endswith(b"\n"):  # the whole line is in this chunk: its line break is not part of it
            head = chunk[:-2 if chunk.endswith(b"\r\n") else -1][:keep]
        while not chunk.endswith(b"\n"):
            chunk = reader.readline(READ_CHUNK)
            if not chunk:
                break
            length += len(chunk)
        length -= 2 if chunk.endswith(b"\r\n") else (1 if chunk.endswith(b"\n") else 0)
        yield Line(number, head, length)


PARQUET_BATCH_BYTES = 8 << 20  # the rows of a Parquet file held at once, by the row groups' sizes


def parquet_rows(f: IO[bytes], columns: list[str], batch_rows: int = 1024) -> Iterator[bytes]:
    """Each row of a Parquet file as a JSON object of ``columns`` (UTF-8 bytes), row group by row group, in batches
    of at most ``batch_rows`` rows and, by the row group's average row, about PARQUET_BATCH_BYTES."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(f)
    names = parquet.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise UnreadableFile(f"no column {missing[0]!r} (columns: {', '.join(names)})")
    for group in range(parquet.metadata.num_row_groups):
        meta = parquet.metadata.row_group(group)
        row_bytes = meta.total_byte_size / max(meta.num_rows, 1)
        size = max(1, min(batch_rows, int(PARQUET_BATCH_BYTES / max(row_bytes, 1))))
        yield from _json_rows(parquet.iter_batches(batch_size=size, row_groups=[group], columns=columns))


def _json_rows(batches) -> Iterator[bytes]:
    for batch in batches:
        for row in batch.to_pylist():
            yield json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def parquet_columns(path: str) -> list[str]:
    """The column names of one Parquet file (its footer only)."""
    import pyarrow.parquet as pq

    with _raw(path) as f:
        return pq.ParquetFile(f).schema_arrow.names
