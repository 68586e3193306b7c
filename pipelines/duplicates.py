"""Copies of one content, exact and near: found in one Spark job of a run and decided on the driver.

Every row carries a *fingerprint* of its content after preparation (``dataset.rows.FINGERPRINT``): for an image
a 64-bit BLAKE2b of its decoded, converted, resized pixels (``pipelines.images.pixel_fingerprint``: one picture
saved as two files, or as PNG and as BMP, has one fingerprint, whatever the dataset's codec); for a text the 64-bit xxHash of its
normalised text (Unicode NFKC, lower-cased when ``lowercase``, whitespace runs collapsed; the token list joined
when the records give tokens), the key its split is drawn from. The split of a row is drawn from its fingerprint
(``pipelines.splits.split_of_hash``), so exact copies land in one split by construction.

*Near* copies of an image (resized, re-encoded: other pixels) are found from its 8x8 grey thumbnail
(``pipelines.images.thumbnail``, stored as ``dataset.rows.THUMBNAIL``): two images whose thumbnails differ by at
most ``NEAR_MEAN_DIFF`` grey levels on average are near copies. Candidates come from locality-sensitive hashing:
``NEAR_TABLES`` tables, each keyed by ``NEAR_DIMS`` fixed thumbnail pixels quantised into cells of ``NEAR_CELL``
levels at fixed random offsets, so near thumbnails share a key in some table with high probability, and only rows
sharing a key are compared. Near copies are grouped (connected components), never rejected: a group's rows go to
one split. Texts are matched on their normalised text only (the fingerprint): it catches the same review posted
twice with other spacing or case, which is the copy that decides whether a test split measures memory; a fuzzy
text match (MinHash over shingles) would be the next step.

``search`` sends every accepted row to the partition of its exact key (the fingerprint) and of its near keys, in
one shuffle (a partition per ROWS_PER_PARTITION keyed rows); a Python worker sorts each partition and walks it with
array operations (every pair of a bucket compared at once, buckets of one size together) and returns the exact
groups and, for each set of linked near copies, a row per member naming the set's first, not the pairs and not
the other rows, to the driver. ``decide`` (plain Python) turns them into *marks*: under ``duplicates: reject`` every
copy after the first of an exact group of one class is rejected as ``duplicate: same content as <first>`` (rows
carried from the snapshot come first, then by source name), and every copy of an exact group under several
classes as ``conflicting labels: ...``; under ``keep`` nothing is rejected and the counts still say what was
found. A group (exact or near) that holds rows of the previous snapshot keeps their split, so an incremental run
routes a new copy to where its content already is; a group of new rows goes to the split of its smallest
fingerprint. ``apply`` sets the marks on the rows (map literals, or a broadcast join when there are very many),
which keep their partitions and their order, as ``routing.route`` needs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dataset.rows import FINGERPRINT, THUMBNAIL
from pipelines.session import constant_map
from pipelines.splits import split_of_hash_value

MODES = ("reject", "keep", "ignore")  # not "off": YAML reads off as false
DUPLICATE = "duplicate"                   # the rejection categories (a reason's text up to its first ':')
CONFLICTING = "conflicting labels"
CATEGORIES = (DUPLICATE, CONFLICTING)
SHOWN = 3                                 # names quoted in a conflicting-labels reason

# Near copies. Measured on the sample images at 16, 32 and 64 px (tests/pipelines/test_duplicates.py plants such
# copies): a copy resized to 50-90 % and saved again as JPEG differs from its original's thumbnail by 0.3-0.5 grey
# levels on average (at most 4.9), two different images by at least 7.2 in 45,000 pairs. 4 tables of 16 pixels in
# cells of 64 levels gave 299 of 300 planted copies a shared key, with fewer candidate pairs than rows (8 tables of
# cells of 48: all 300, twice the rows through the search's shuffle).
NEAR_MEAN_DIFF = 6.0
NEAR_TABLES, NEAR_DIMS, NEAR_CELL, NEAR_SEED = 4, 16, 64, 20261207
EXACT_TABLE = -1
_SEARCH_SCHEMA = ("kind string, grp long, source string, name string, split string, carried boolean, "
                  "fingerprint long, other string")


@dataclass(frozen=True)
class Member:
    """One accepted row of a group: where it came from, its class name, its split, whether carried, its
    fingerprint."""
    source: str
    name: str | None
    split: str
    carried: bool
    fingerprint: int | None = None


@dataclass
class Found:
    """What ``decide`` found: ``marks`` (source -> (split or None, reason or None)) and the manifest's counts."""
    marks: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    groups: int = 0             # fingerprints held by more than one row
    duplicates: int = 0         # rows after the first of an exact group of one class
    conflicting: int = 0        # rows of exact groups under more than one class
    rejected: int = 0           # rows rejected for either (0 under keep)
    new_rejected: int = 0       # of which this run's new records
    near_groups: int | None = None  # groups of near copies: rows of more than one fingerprint (None: not searched)
    near_rows: int | None = None    # rows in them
    cross_split: int = 0        # groups (exact or near) whose kept rows stay in more than one split

    def counts(self) -> dict[str, int | None]:
        return {"groups": self.groups, "duplicates": self.duplicates, "conflicting": self.conflicting,
                "rejected": self.rejected, "cross_split": self.cross_split, "near_groups": self.near_groups,
                "near_rows": self.near_rows}


# ----- the search ----------------------------------------------------------------------------------------------

def content_fingerprint(content: Column) -> Column:
    """The fingerprint of an accepted row from the column that holds its prepared content (null when rejected)."""
    return F.when(F.col("reason").isNull() & content.isNotNull(), F.xxhash64(content))


def carried_fingerprints(df: DataFrame | None, computed: Column | None) -> DataFrame | None:
    """Rows carried from the previous snapshot with their fingerprint: as stored, or (a snapshot written before
    fingerprints) ``computed`` from what is stored where that gives it (images: their decoded pixels), else null
    (texts: their normalised text is not stored; such rows take no part in the search until a full run)."""
    if df is None or FINGERPRINT in df.columns:  # as stored (a Python UDF in a coalesce would run on every row)
        return df
    return df.withColumn(FINGERPRINT, computed if computed is not None else F.lit(None).cast("long"))


def members(df: DataFrame, *, source: Column, name: Column, carried: bool, near: bool) -> DataFrame:
    """The columns ``search`` reads: the accepted rows of ``df`` with a fingerprint, and with ``near`` their
    thumbnail and its near keys (made by the decode step for new rows; for rows carried from a snapshot, from
    their stored thumbnail, where they have one)."""
    thumb, keys = F.lit(None).cast("binary"), F.lit(None).cast("array<long>")
    if near and THUMBNAIL in df.columns:
        thumb = F.col(THUMBNAIL)
        keys = F.col("near_keys") if "near_keys" in df.columns else _keys_of(F.col(THUMBNAIL))
    return (df.where(F.col("reason").isNull() & F.col(FINGERPRINT).isNotNull())
            .select(F.col(FINGERPRINT).alias("fingerprint"), source.alias("source"), name.alias("name"),
                    F.col("split"), F.lit(carried).alias("carried"), thumb.alias("thumbnail"),
                    keys.alias("near_keys")))


def _keys_of(thumbnail: Column) -> Column:
    """``near_keys`` of a column of stored thumbnails (an Arrow UDF; rows carried from the previous snapshot)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<long>")
    def keys(thumbs: pd.Series) -> pd.Series:
        present = [i for i, t in enumerate(thumbs) if t is not None and len(t) == 64]
        out: list = [None] * len(thumbs)
        if present:
            for i, k in zip(present, near_keys(np.frombuffer(b"".join(bytes(thumbs.iloc[i]) for i in present),
                                                            np.uint8).reshape(len(present), 64)).tolist()):
                out[i] = k
        return pd.Series(out, dtype=object)

    return keys(thumbnail)


def _tables() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(NEAR_SEED)
    dims = np.stack([rng.choice(64, NEAR_DIMS, replace=False) for _ in range(NEAR_TABLES)])
    return dims, rng.uniform(0, NEAR_CELL, (NEAR_TABLES, NEAR_DIMS))


def near_keys(thumbs: np.ndarray) -> np.ndarray:
    """(rows, NEAR_TABLES) int64 keys of 64-byte thumbnails (rows, 64): each table's pixels quantised into cells,
    packed 3 bits a pixel (a cell index is below 6)."""
    dims, offsets = _tables()
    cells = np.floor((thumbs[:, dims].astype(np.float64) + offsets) / NEAR_CELL).astype(np.int64)  # (n, T, D)
    return (cells << (3 * np.arange(NEAR_DIMS, dtype=np.int64))).sum(axis=2)


def near_pairs(thumbs: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) of thumbnails (rows, 64) that differ by at most NEAR_MEAN_DIFF levels on average."""
    return [(int(i), int(j)) for a, b in _close_pairs(thumbs.astype(np.int16), 0, len(thumbs)) for i, j in zip(a, b)]


BLOCK = 256  # rows of a bucket compared with all of it at once (bounded memory whatever a bucket's size)
PAIRS = 1 << 20  # candidate pairs of small buckets compared at once


def _close_pairs(thumbs: np.ndarray, start: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row index pairs (i < j) of the bucket ``thumbs[start:start + size]`` whose thumbnails differ by at most
    NEAR_MEAN_DIFF levels on average, a block of rows at a time."""
    rows = thumbs[start:start + size]
    for first in range(0, size, BLOCK):
        block = np.abs(rows[first:first + BLOCK, None, :] - rows[None, :, :]).mean(axis=2)
        i, j = np.nonzero(block <= NEAR_MEAN_DIFF)
        i = i + first
        keep = i < j
        yield start + i[keep], start + j[keep]


def _candidates(thumbs: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The close pairs of every bucket ``[start, start + size)``: buckets of one size up to BLOCK rows together
    (every pair of each, compared in one array operation), larger ones a block at a time."""
    for size in np.unique(sizes):
        bucket_starts = starts[sizes == size]
        if size > BLOCK:
            for start in bucket_starts:
                yield from _close_pairs(thumbs, int(start), int(size))
            continue
        i, j = np.triu_indices(int(size), 1)
        step = max(1, PAIRS // len(i))
        for first in range(0, len(bucket_starts), step):
            base = bucket_starts[first:first + step, None]
            a, b = (base + i).ravel(), (base + j).ravel()
            close = np.abs(thumbs[a] - thumbs[b]).mean(axis=1) <= NEAR_MEAN_DIFF
            yield a[close], b[close]


def _link(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join rows ``a[k]`` and ``b[k]``: afterwards ``labels[x]`` is the smallest row linked to ``x`` through every
    pair given so far (hook the larger root under the smaller, then halve paths until every label is a root)."""
    while len(a):
        la, lb = labels[a], labels[b]
        differ = la != lb
        if not differ.any():
            return
        a, b, la, lb = a[differ], b[differ], la[differ], lb[differ]
        low = np.minimum(la, lb)
        np.minimum.at(labels, la, low)
        np.minimum.at(labels, lb, low)
        while True:
            up = labels[labels]
            if np.array_equal(up, labels):
                break
            labels[:] = up


def _thumbnails(column, rows: int) -> np.ndarray:
    """(rows, 64) int16 pixels of an Arrow binary column of thumbnails; a null or one of another length reads as
    -1000 everywhere, close to nothing."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.full((rows, 64), -1000, np.int16)
    if rows == 0 or array.null_count == rows:
        return out
    width = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], width)[array.offset:array.offset + rows + 1].astype(np.int64)
    data = np.frombuffer(array.buffers()[2], np.uint8)
    ok = ((offsets[1:] - offsets[:-1]) == 64) & ~np.asarray(array.is_null(), bool)
    out[ok] = data[offsets[:-1][ok, None] + np.arange(64)]
    return out


def _keyed(parts: list[DataFrame], near: bool, exact_table: bool) -> DataFrame:
    """Every member under each of its near keys (table 0-3) with ``near``, and with ``exact_table`` once more under
    its exact key (table -1, its fingerprint). Without it, exact copies are found in the buckets of near table 0:
    one content has one thumbnail, so its copies share every near key."""
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    info = ["fingerprint", "source", "name", "split", "carried"]
    if near:
        near_rows = union.where(F.col("near_keys").isNotNull()).select(
            F.posexplode("near_keys").alias("tbl", "key"), *info, "thumbnail")
        if not exact_table:  # not built at all: each DataFrame step is an analysis of the plan on the driver
            return near_rows
    exact = union.select(F.lit(EXACT_TABLE).alias("tbl"), F.col("fingerprint").alias("key"), *info,
                         F.lit(None).cast("binary").alias("thumbnail"))
    return exact.unionByName(near_rows) if near else exact


ROWS_PER_PARTITION = 250_000  # keyed rows (a member's exact key and its near keys) per partition of the search


def partitions(records: int, *, near: bool, most: int) -> int:
    """Partitions of the search's shuffle for about ``records`` members: one per ROWS_PER_PARTITION keyed rows.
    With ``near`` each partition is held whole by a Python worker (``walk`` sorts it: about 33 MB at that many
    rows), so their number follows the rows whatever ``most`` (spark.sql.shuffle.partitions) says; the exact
    search alone is Spark's aggregation, at most ``most``. A partition costs a task and, with ``near``, a Python
    worker's batch set-up: 16,000 images searched on 16 partitions of a 2-core machine took 1.3 s, on 2 0.57 s."""
    keyed = max(records, 1) * (1 + NEAR_TABLES if near else 1)
    wanted = -(-keyed // ROWS_PER_PARTITION)
    return max(1, wanted if near else min(most, wanted))


def search(parts: list[DataFrame], *, near: bool, partitions: int) -> list[dict]:
    """The exact groups (one row per member, ``kind`` exact, ``grp`` the fingerprint) and the near copies (a row
    per member of a set of close rows, ``kind`` near, ``other`` a source it is linked to) among ``parts``
    (``members``): one shuffle into ``partitions`` and one pass of Python workers, each sorting its partition; without
    ``near``, one aggregation (a Spark job either way: the caller names it)."""
    if not near:  # exact copies only: an aggregation, no Python worker
        union = parts[0]
        for part in parts[1:]:
            union = union.unionByName(part)
        groups = (union.repartition(partitions, "fingerprint").groupBy("fingerprint")
                  .agg(F.count(F.lit(1)).alias("n"),
                       F.collect_list(F.struct("source", "name", "split", "carried")).alias("rows"))
                  .where(F.col("n") > 1))
        return [{**m.asDict(), "kind": "exact", "grp": g["fingerprint"], "fingerprint": g["fingerprint"],
                 "other": None} for g in groups.collect() for m in g["rows"]]
    # Rows carried from a snapshot may have no thumbnail (written before them, or with near_duplicates off), so
    # that their copies among the new rows meet them only under the exact key; new rows all have one.
    exact_table = len(parts) > 1
    keyed = _keyed(parts, near, exact_table).repartition(partitions, "tbl", "key")  # sorted by ``walk``
    walker = functools.partial(walk, exact_table=EXACT_TABLE if exact_table else 0)
    found = keyed.mapInArrow(walker, _SEARCH_SCHEMA)
    if hasattr(found, "toArrow"):  # PySpark 4: Arrow all the way (11,000 rows: 0.3 s less than Row objects)
        return found.toArrow().to_pylist()
    return [row.asDict() for row in found.collect()]


def walk(batches: Iterator, exact_table: int = EXACT_TABLE) -> Iterator:
    """``search``'s Python pass: the Arrow batches of one partition, in any order -> a batch of its rows. The
    partition is sorted here by (tbl, key, fingerprint) (a partition holds about ROWS_PER_PARTITION rows of ~130
    bytes: 128,000 keyed rows sort in ~20 ms, where Spark's sort of them by three columns took ~0.1 s a core);
    exact copies are the rows of one fingerprint in a bucket of ``exact_table``."""
    import pyarrow as pa

    tables = [pa.Table.from_batches([batch]) for batch in batches]
    if not tables:
        return
    table = pa.concat_tables(tables)
    order = np.lexsort((table.column("fingerprint").to_numpy(), table.column("key").to_numpy(),
                        table.column("tbl").to_numpy()))
    out = _buckets(table.take(pa.array(order)), exact_table=exact_table)
    if out is not None:
        yield out


def _runs(changed: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, sizes) of the runs of rows 0..n-1, ``changed[i]`` telling whether row i+1 starts a new one."""
    starts = np.flatnonzero(np.r_[True, changed]) if n else np.zeros(0, np.int64)
    return starts, np.r_[starts[1:], n] - starts


def rows_of(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Every row index of the runs (starts, sizes), in order: ``concatenate([arange(s, s + n) ...])`` without a
    Python loop."""
    return np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes) + np.repeat(starts, sizes)


def _buckets(table, *, exact_table: int = EXACT_TABLE):
    """The search's rows (an Arrow batch, or None) of the buckets (runs of equal (tbl, key)) of a table sorted by
    (tbl, key, fingerprint). Array operations only: every row of a run of one fingerprint in a bucket of
    ``exact_table`` (exact copies), and of near buckets each row of a set of close rows with the source of that
    set's first row as ``other`` (enough for ``decide``'s connected components; a set of n near copies gives n
    rows, not n*(n-1), however many tables link them)."""
    import pyarrow as pa

    tbl = table.column("tbl").to_numpy()
    key = table.column("key").to_numpy()
    fingerprint = table.column("fingerprint").to_numpy(zero_copy_only=False)
    n = len(key)
    bucket_changed = (tbl[1:] != tbl[:-1]) | (key[1:] != key[:-1])
    starts, sizes = _runs(bucket_changed, n)
    starts, sizes = starts[sizes > 1], sizes[sizes > 1]
    exact = tbl[starts] == EXACT_TABLE
    copies, lengths = _runs(bucket_changed | (fingerprint[1:] != fingerprint[:-1]), n)
    copies_read = (lengths > 1) & (tbl[copies] == exact_table)
    exact_rows = rows_of(copies[copies_read], lengths[copies_read])
    labels = np.arange(n)
    if (~exact).any():
        thumbs = _thumbnails(table.column("thumbnail"), n)
        codes = np.asarray(table.column("source").combine_chunks().dictionary_encode().indices)
        first = np.zeros(codes.max() + 1, np.int64)
        kinds, at = np.unique(codes, return_index=True)
        first[kinds] = at
        for a, b in _candidates(thumbs, starts[~exact], sizes[~exact]):
            _link(labels, first[codes[a]], first[codes[b]])  # a source's rows in other tables: one node
    linked = np.flatnonzero(labels != np.arange(n))
    near_rows = np.unique(np.r_[linked, labels[linked]])
    if not len(exact_rows) and not len(near_rows):
        return None
    source = table.column("source")
    parts = []
    for rows, kind, grp, other in ((exact_rows, "exact", fingerprint[exact_rows], None),
                                   (near_rows, "near", np.zeros(len(near_rows), np.int64),
                                    source.take(pa.array(labels[near_rows])))):
        if not len(rows):
            continue
        picked = table.take(pa.array(rows))
        parts.append(pa.table({"kind": pa.array([kind] * len(rows), pa.string()), "grp": pa.array(grp, pa.int64()),
                               **{c: picked.column(c) for c in ("source", "name", "split", "carried", "fingerprint")},
                               "other": other if other is not None else pa.nulls(len(rows), pa.string())}))
    out = pa.concat_tables(parts).cast(_arrow_search_schema()).combine_chunks()
    return out.to_batches()[0]


def _arrow_search_schema():
    import pyarrow as pa

    return pa.schema([("kind", pa.string()), ("grp", pa.int64()), ("source", pa.string()), ("name", pa.string()),
                      ("split", pa.string()), ("carried", pa.bool_()), ("fingerprint", pa.int64()),
                      ("other", pa.string())])


# ----- the decision ----------------------------------------------------------------------------------------------

def decide(rows: list[dict], *, mode: str, fractions: dict[str, float], near: bool) -> Found:
    """Marks and counts of ``search``'s rows. The row kept of an exact group of one class is the first carried
    from the previous snapshot, else the first by source name; every group (exact copies joined with their near
    copies) goes to the smallest split of its carried rows, else to the split of its smallest fingerprint."""
    if mode not in MODES:
        raise ValueError(f"duplicates {mode!r} is not one of {', '.join(MODES)}")
    nodes: dict[str, Member] = {}
    exact: dict[int, set[str]] = {}
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in rows:
        nodes[r["source"]] = Member(r["source"], r["name"], r["split"], r["carried"], r["fingerprint"])
        root(r["source"])
        if r["kind"] == "exact":
            exact.setdefault(r["grp"], set()).add(r["source"])
        else:
            join(r["source"], r["other"])
    for sources in exact.values():
        first = min(sources)
        for s in sources:
            join(first, s)

    found = Found(near_groups=0 if near else None, near_rows=0 if near else None)
    rejected: set[str] = set()
    for fp in sorted(exact):
        group = sorted((nodes[s] for s in exact[fp]), key=lambda m: (not m.carried, m.source))
        found.groups += 1
        names = sorted({m.name for m in group if m.name is not None})
        for i, m in enumerate(group):
            reason = None
            if len(names) > 1:
                found.conflicting += 1
                others = [o.source for o in group if o is not m][:SHOWN]
                reason = (f"{CONFLICTING}: the same content is labelled {', '.join(names)} (also "
                          f"{', '.join(others)}{', ...' if len(group) - 1 > SHOWN else ''})")
            elif i:
                found.duplicates += 1
                reason = f"{DUPLICATE}: same content as {group[0].source}"
            if reason is not None and mode == "reject":
                found.marks[m.source] = (None, reason)
                rejected.add(m.source)
                found.rejected += 1
                found.new_rejected += not m.carried
    components: dict[str, list[Member]] = {}
    for source in nodes:
        components.setdefault(root(source), []).append(nodes[source])
    for group in components.values():
        carried = [m.split for m in group if m.carried]
        target = min(carried) if carried else split_of_hash_value(min(m.fingerprint for m in group), fractions)
        kept = set()
        for m in group:
            split = m.split
            if not m.carried and m.split != target and m.source not in rejected:
                found.marks[m.source] = (target, None)
                split = target
            if m.source not in rejected:
                kept.add(split)
        found.cross_split += len(kept) > 1
        if near and len({m.fingerprint for m in group}) > 1:
            found.near_groups += 1
            found.near_rows += len(group)
    return found


LITERAL_MARKS = 10_000  # up to this many marks travel in the query as map literals (no Spark job of their own)


def apply(df: DataFrame, found: Found, *, spark, source: Column) -> DataFrame:
    """``df`` with the marks of ``found``: ``split`` moved and ``reason`` set where marked. Up to LITERAL_MARKS
    marks are looked up in map literals of the query (a lookup per row, no join: measured at 0.8 us a row with
    10,000 marks), sent as JSON that Spark's optimiser folds into the map (``session.constant_map``); more are
    joined as a broadcast table, which costs each Spark action one job more. Either way ``df`` keeps its
    partitions and their row order, as ``routing.route`` needs."""
    if not found.marks:
        return df
    if len(found.marks) <= LITERAL_MARKS:
        def lookup(index: int) -> Column:
            pairs = {s: mark[index] for s, mark in found.marks.items() if mark[index] is not None}
            if not pairs:
                return F.lit(None).cast("string")
            return constant_map(pairs, "string", "string")[source]

        return df.withColumns({"split": F.coalesce(lookup(0), F.col("split")),
                               "reason": F.coalesce(F.col("reason"), lookup(1))})
    marks = spark.createDataFrame([(s, split, reason) for s, (split, reason) in sorted(found.marks.items())],
                                  "_bt_source string, _bt_split string, _bt_reason string")
    return (df.withColumn("_bt_source", source).join(F.broadcast(marks), "_bt_source", "left")
            .withColumns({"split": F.coalesce(F.col("_bt_split"), F.col("split")),
                          "reason": F.coalesce(F.col("reason"), F.col("_bt_reason"))})
            .drop("_bt_source", "_bt_split", "_bt_reason"))


def budget_problem(copies: int, records: int, budget: float) -> str | None:
    """Why ``copies`` (duplicates and conflicting records) exceed ``duplicates_budget``, a fraction of the
    snapshot's ``records``, or None."""
    if records and copies / records > budget:
        return (f"{copies} of the snapshot's {records} records are copies of another record's content "
                f"({copies / records:.1%}), more than duplicates_budget {budget:.1%}")
    return None
