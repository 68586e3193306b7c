"""The input listing and the file readers (``pipelines.inputs``, ``pipelines.text.file_records``) as plain Python:
names the JVM cannot spell, links, loops, special files, corrupt and truncated files, lines over the cap."""
from __future__ import annotations

import gzip
import io
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import inputs, text


def listed(root, **kw) -> dict[str, str | None]:
    return {e.relpath: e.problem for e in inputs.list_files(f"file://{root}", **kw).entries}


def records(root, fmt="jsonl", fields=(), max_record_bytes=None):
    out = []
    for e in inputs.list_files(f"file://{root}").entries:
        out += text.file_records(e.path, e.relpath, e.problem, fmt=fmt, fields=list(fields),
                                 max_record_bytes=max_record_bytes)
    return out


def test_every_name_the_file_system_allows_is_listed_and_one_that_is_not_utf8_is_a_reject(tmp_path):
    (tmp_path / "café").mkdir()
    (tmp_path / "café" / "é.png").write_bytes(b"x")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".shot 2024-01-01T10:00:00.png").write_bytes(b"hidden")
    (tmp_path / "a" / "shot 2024-01-01T10:00:00.png").write_bytes(b"x")
    (tmp_path / "a" / "x [1] {2} *?%20#+.png").write_bytes(b"x")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    with open(os.fsencode(tmp_path / "a") + b"/caf\xe9.png", "wb") as f:  # Latin-1 bytes: not UTF-8
        f.write(b"x")
    listing = inputs.list_files(f"file://{tmp_path}")
    got = {e.relpath: e.problem for e in listing.entries}
    assert got == {"café/é.png": None, "a/shot 2024-01-01T10:00:00.png": None, "a/x [1] {2} *?%20#+.png": None,
                   "a/caf\\xe9.png": "file name is not valid UTF-8: rename it to read it"}
    assert listing.hidden == 2
    entry = next(e for e in listing.entries if e.relpath == "café/é.png")
    assert entry.path == f"file:{tmp_path}/café/é.png" and entry.size == 1 and entry.mtime > 0


def test_links_are_rejects_unless_followed_and_then_only_inside_the_input_and_once(tmp_path):
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "x.png").write_bytes(b"b's image")
    (tmp_path / "secret").write_bytes(b"outside")
    os.symlink("..", root / "a" / "loop")                  # a loop through the root
    os.symlink(root / "b" / "x.png", root / "a" / "x.png")  # class b's image under a
    os.symlink(tmp_path / "secret", root / "a" / "secret.png")
    os.symlink(tmp_path / "gone", root / "a" / "dangling.png")
    assert listed(root) == {"a/dangling.png": inputs.LINK, "a/loop": inputs.LINK, "a/secret.png": inputs.LINK,
                            "a/x.png": inputs.LINK, "b/x.png": None}
    followed = listed(root, follow_links=True)
    assert followed["b/x.png"] is None and followed["a/x.png"].startswith("symbolic link: the same file as b/x.png")
    assert followed["a/secret.png"].startswith("symbolic link: leads out of the input folder")
    assert followed["a/dangling.png"].startswith("symbolic link: leads out of the input folder")
    assert followed["a/loop"].startswith("symbolic link: to a folder already read (a loop")  # walked once

    os.symlink(root / "b", root / "c")                     # a second way into a folder: it is read once
    assert listed(root, follow_links=True)["c"].startswith("symbolic link: to a folder already read")


def test_hard_links_are_files_of_their_own_and_any_depth_is_walked(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / "cats" / "x.png").write_bytes(b"x")
    os.link(tmp_path / "cats" / "x.png", tmp_path / "dogs" / "x.png")  # cp -al, rsync --link-dest
    deep = tmp_path.joinpath(*["a"] * 600)  # deeper than Python's recursion limit allows a recursive walk
    deep.mkdir(parents=True)
    (deep / "y.png").write_bytes(b"y")
    got = listed(tmp_path, follow_links=True)
    assert got["cats/x.png"] is None and got["dogs/x.png"] is None
    assert got["/".join(["a"] * 600) + "/y.png"] is None and len(got) == 3


def test_one_file_input_that_is_a_link_is_followed_when_asked(tmp_path):
    (tmp_path / "real.jsonl").write_text("{}\n")
    os.symlink(tmp_path / "real.jsonl", tmp_path / "current.jsonl")
    url = f"file://{tmp_path}/current.jsonl"
    assert [(e.relpath, e.problem) for e in inputs.list_files(url).entries] == [("current.jsonl", inputs.LINK)]
    assert [(e.relpath, e.problem) for e in inputs.list_files(url, follow_links=True).entries] == [
        ("current.jsonl", None)]


def test_special_files_and_unreadable_folders_are_rejects(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    assert listed(tmp_path) == {"pipe.jsonl": "not a regular file: a device, pipe or socket"}
    if os.geteuid() != 0:  # root reads any folder
        (tmp_path / "closed").mkdir(mode=0)
        assert listed(tmp_path)["closed"].startswith("unreadable folder")


def test_one_file_input_is_listed_relative_to_its_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    listing = inputs.list_files(f"file://{tmp_path}/a.jsonl")
    assert [e.relpath for e in listing.entries] == ["a.jsonl"] and listing.root == f"file://{tmp_path}"
    assert inputs.input_root(f"file://{tmp_path}") == f"file://{tmp_path}"


def test_corrupt_and_truncated_files_are_one_reject_each_and_the_lines_before_stay(tmp_path):
    whole = gzip.compress(b"".join(b'{"i": %d, "pad": "%s"}\n' % (i, os.urandom(8).hex().encode())
                                   for i in range(2000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "fake.jsonl.gz").write_bytes(b'{"plain": "text"}\n')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "x.zst").write_bytes(b"?")
    got = records(tmp_path)
    broken = {r.source: r.broken for r in got if r.broken}
    kept = [r for r in got if not r.broken and r.source.startswith("cut.jsonl.gz:")]
    assert 0 < len(kept) < 2000
    assert broken[f"cut.jsonl.gz:{len(kept) + 1}"].startswith("corrupt or truncated file: EOFError")
    assert broken["fake.jsonl.gz:1"].startswith("corrupt or truncated file: BadGzipFile")
    assert broken["x.zst:1"] == "unsupported compression: .zst (use .gz or .bz2, or none)"
    parquet = text.file_records(f"file:{tmp_path}/bad.parquet", "bad.parquet", None, fmt="parquet", fields=["t"],
                                max_record_bytes=None)
    (reject,) = list(parquet)
    assert reject.source == "bad.parquet:1" and "ArrowInvalid" in reject.broken


def test_a_file_is_read_whole_up_to_the_cap_and_one_that_grew_past_it_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"x" * 100)
    url = f"file:{tmp_path}/a.png"
    assert inputs.read_bytes(url, 100) == inputs.read_bytes(url, None) == b"x" * 100
    with pytest.raises(inputs.UnreadableFile, match="file too large: more than max_file_bytes 99 bytes"):
        inputs.read_bytes(url, 99)

    class Grown(io.BytesIO):  # a file whose size was taken at 10 bytes, then it grew to 50
        size = 10

    monkeypatch.setattr(inputs, "_raw", lambda path: Grown(b"y" * 50))
    assert inputs.read_bytes("s3a://b/grown.png", 50) == b"y" * 50  # read on past its size, to the cap
    with pytest.raises(inputs.UnreadableFile, match="file too large"):
        inputs.read_bytes("s3a://b/grown.png", 49)


def test_a_line_over_the_cap_is_measured_without_being_held(tmp_path):
    big = 8 * 1024 * 1024
    with open(tmp_path / "a.jsonl", "wb") as f:
        f.write(b'\xef\xbb\xbf{"t": "first"}\r\n')
        f.write(b"x" * big + b"\n")
        f.write(b'{"t": "after"}')                          # no final line break
    got = records(tmp_path, max_record_bytes=1024)
    assert [(r.source, r.raw, r.broken) for r in got] == [
        ("a.jsonl:1", b'{"t": "first"}', None),              # the byte order mark and \r\n are not the record's
        ("a.jsonl:2", b"x" * text.RAW_TEXT_LIMIT, f"record too long: {big} bytes, more than max_record_bytes 1024"),
        ("a.jsonl:3", b'{"t": "after"}', None)]


def test_lines_hold_at_most_the_cap_at_a_time():
    stream = io.BytesIO(b"a" * 10_000 + b"\nshort\n")
    got = list(inputs.lines(stream, 100, 10))
    assert [(x.number, x.raw, x.length) for x in got] == [(1, b"a" * 10, 10_000), (2, b"short", 5)]


def test_csv_headers_line_numbers_and_records_spanning_lines(tmp_path):
    (tmp_path / "r.csv").write_bytes(b'review,stars\n"Good, really",5\n"opens\r\nand closes",1\nbad,1\n')
    got = records(tmp_path, fmt="csv")
    assert [(r.source, r.raw, r.broken, r.header) for r in got] == [
        ("r.csv:2", b'"Good, really",5', None, b"review,stars"),
        ("r.csv:3", b'"opens\nand closes",1', None, b"review,stars"),     # lines 3 and 4: one record
        ("r.csv:5", b"bad,1", None, b"review,stars")]


def test_an_unbalanced_csv_quote_rejects_its_lines_up_to_the_end_or_the_record_cap(tmp_path):
    (tmp_path / "u.csv").write_bytes(b'a,b\nx,1\n"never closed,2\ny,3\n')
    got = [(r.source, r.broken) for r in records(tmp_path, fmt="csv")]
    reason = "broken CSV: unbalanced quote: the quoted field opened at line 3 is not closed by the end of the file"
    assert got == [("u.csv:2", None), ("u.csv:3", reason), ("u.csv:4", reason)]
    (tmp_path / "u.csv").write_bytes(b'a,b\n"opens,1\n' + b"more text,2\n" * 5 + b"z,9\n")
    got = [(r.source, r.broken) for r in records(tmp_path, fmt="csv", max_record_bytes=40)]
    assert [s for s, broken in got if broken] == ["u.csv:2", "u.csv:3", "u.csv:4", "u.csv:5"]  # past 40 bytes
    assert all("not closed by the end of the file or within max_record_bytes 40" in b for _, b in got if b)
    assert [s for s, broken in got if not broken] == ["u.csv:6", "u.csv:7", "u.csv:8"]  # reading goes on


def test_parquet_rows_are_json_objects_and_a_file_without_the_column_is_a_reject(tmp_path):
    pq.write_table(pa.table({"text": ["fine", None], "stars": [5, 1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"other": ["x"]}), tmp_path / "b.parquet")
    got = [(r.source, r.raw, r.broken) for r in records(tmp_path, fmt="parquet", fields=["text", "stars"])]
    assert got == [("a.parquet:1", b'{"text":"fine","stars":5}', None),
                   ("a.parquet:2", b'{"text":null,"stars":1}', None),
                   ("b.parquet:1", b"", "no column 'text' (columns: other)")]


@pytest.mark.parametrize("problem", [inputs.LINK, "file name is not valid UTF-8: rename it to read it"])
def test_a_listed_problem_is_the_files_one_reject(problem):
    (record,) = text.file_records("file:/nowhere/x.jsonl", "x.jsonl", problem, fmt="jsonl", fields=[],
                                  max_record_bytes=None)
    assert (record.source, record.raw, record.broken) == ("x.jsonl:1", b"", problem)


def test_an_object_store_input_is_listed_and_read_through_fsspec(s3_server, monkeypatch):
    import fsspec
    import s3fs

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    fsspec.config.conf.clear()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("inputs-test")
    fs.pipe({"inputs-test/in/a b:1.jsonl": b'{"t": 1}\n{"t": 2}\n', "inputs-test/in/sub/c.jsonl.gz": gzip.compress(b"x\n"),
             "inputs-test/in/_SUCCESS": b""})
    try:
        listing = inputs.list_files("s3://inputs-test/in")
        assert [(e.path, e.relpath, e.size) for e in listing.entries] == [
            ("s3://inputs-test/in/a b:1.jsonl", "a b:1.jsonl", 18), ("s3://inputs-test/in/sub/c.jsonl.gz", "sub/c.jsonl.gz",
                                                                   len(gzip.compress(b"x\n")))]
        assert listing.hidden == 1 and all(e.mtime > 0 and e.problem is None for e in listing.entries)
        got = [(r.source, r.raw) for e in listing.entries
               for r in text.file_records(e.path, e.relpath, None, fmt="jsonl", fields=[], max_record_bytes=None)]
        assert got == [("a b:1.jsonl:1", b'{"t": 1}'), ("a b:1.jsonl:2", b'{"t": 2}'), ("sub/c.jsonl.gz:1", b"x")]
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def one_thread_listing(url: str, *, follow_links: bool) -> inputs.Listing:
    """The listing as one walk in one thread (``_LocalWalk.walk``), what the threaded listing must equal."""
    root = inputs.local_path(url)
    listing = inputs.Listing(root=inputs.input_root(url), entries=[])
    walker = inputs._LocalWalk(listing, os.fsencode(root), follow_links=follow_links)
    walker.walk(os.fsencode(root), b"")
    walker.links()
    listing.entries.sort(key=lambda e: e.relpath)
    return listing


def test_folders_listed_by_threads_give_the_one_thread_walks_entries_order_and_reasons(tmp_path, monkeypatch):
    """Per-folder walks, in a pool of threads (slow storage: its first folder took over ``SLOW_LISTING`` an entry)
    or one after the other (cached files), merge into the one-thread walk's listing."""
    root = tmp_path / "in"
    for folder in ("a", "b", "c/deep/er", "_hidden", "d"):
        (root / folder).mkdir(parents=True)
    (root / "top.png").write_bytes(b"t")
    (root / ".DS_Store").write_bytes(b"")
    (root / "a" / "x.png").write_bytes(b"x")
    (root / "c" / "deep" / "er" / "y.png").write_bytes(b"y")
    (root / "c" / "_SUCCESS").write_bytes(b"")
    os.link(root / "a" / "x.png", root / "b" / "x.png")           # the same file in two folders: which name is
    os.link(root / "a" / "x.png", root / "d" / "x.png")           # first decides a link's "the same file as"
    os.symlink(root / "d" / "x.png", root / "c" / "to-x.png")
    os.symlink(root / "c" / "deep", root / "b" / "deep")          # a folder read a second way
    os.symlink(root / "b", root / "link-to-b")
    os.symlink("..", root / "d" / "loop")
    os.symlink(tmp_path, root / "a" / "out")
    walks_in = set()
    walk = inputs._LocalWalk.walk

    def recorded(self, path, rel):
        walks_in.add(threading.current_thread() is threading.main_thread())
        return walk(self, path, rel)

    monkeypatch.setattr(inputs._LocalWalk, "walk", recorded)
    for slow, threads in ((0.0, {False}), (1.0, {True})):  # every entry slow: threads; none: this thread alone
        monkeypatch.setattr(inputs, "SLOW_LISTING", slow)
        for follow in (False, True):
            url = f"file://{root}"
            walks_in.clear()
            threaded = inputs.list_files(url, follow_links=follow)
            # the first folder is walked (and timed) in this thread either way
            assert walks_in == {True} | threads
            single = one_thread_listing(url, follow_links=follow)
            assert threaded.entries == single.entries and threaded.hidden == single.hidden == 3
    followed = listed(root, follow_links=True)
    assert followed["c/to-x.png"].startswith("symbolic link: the same file as d/x.png")  # walk: d before b and a


def test_an_object_store_tree_is_found_by_threads_per_top_folder_as_one_find_finds_it():
    import fsspec

    fs = fsspec.filesystem("memory")
    base = "/bigtrain-list-threads"
    fs.pipe({f"{base}/top.jsonl": b"1\n", f"{base}/_SUCCESS": b"", f"{base}/a/x.jsonl": b"2\n",
             f"{base}/b/c/y.jsonl": b"3\n", f"{base}/b/_tmp/z.jsonl": b"4\n", f"{base}/d/w.jsonl": b"5\n"})
    try:
        assert inputs._find(fs, base) == fs.find(base, detail=True)
        listing = inputs.list_files(f"memory://{base}")
        assert [e.relpath for e in listing.entries] == ["a/x.jsonl", "b/c/y.jsonl", "d/w.jsonl", "top.jsonl"]
        assert listing.hidden == 2
    finally:
        fs.rm(base, recursive=True)
