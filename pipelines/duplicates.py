"""Exact duplicates: the same content under two names, found in one Spark job of a run and decided on the driver.

Every row carries a *fingerprint* of its content after preparation (``dataset.rows.FINGERPRINT``): for an image
the 64-bit xxHash of its stored bytes (the decoded, converted, resized pixels as the dataset's codec encodes them,
so one picture saved as two files, or as PNG and as JPEG that decode to the same pixels, has one fingerprint); for
a text the 64-bit xxHash of its normalised text (Unicode NFKC, lower-cased when ``lowercase``, whitespace runs
collapsed; the token list joined when the records give tokens), the key its split is drawn from. The split of a row
is drawn from its fingerprint (``pipelines.splits.split_of_hash``), so copies land in one split by construction.

``find`` groups the accepted rows of a run (new and carried from the previous snapshot) by fingerprint and collects
the groups of more than one row: the copies, not the rows, reach the driver. ``decide`` (plain Python) turns them
into *marks*: under ``duplicates: reject`` every copy after the first of a group of one class is rejected as
``duplicate: same content as <first>`` (rows carried from the snapshot come first, then by source name), and every
copy of a group under several classes as ``conflicting labels: ...``; under ``keep`` nothing is rejected and the
counts still say what was found. A group that holds rows of the previous snapshot keeps their split, so an
incremental run on a snapshot written before fingerprints (split by name) routes a new copy to where its content
already is. ``apply`` joins the marks (a small table, broadcast) to the rows: the rows keep their partitions, as
``routing.route`` needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from dataset.rows import FINGERPRINT

MODES = ("reject", "keep", "off")
DUPLICATE = "duplicate"                   # the rejection categories (a reason's text up to its first ':')
CONFLICTING = "conflicting labels"
CATEGORIES = (DUPLICATE, CONFLICTING)
SHOWN = 3                                 # names quoted in a conflicting-labels reason


@dataclass(frozen=True)
class Member:
    """One accepted row of a duplicate group: where it came from, its class name, its split, whether carried."""
    source: str
    name: str | None
    split: str
    carried: bool


@dataclass
class Found:
    """What ``decide`` found: ``marks`` (source -> (split or None, reason or None)) and the manifest's counts."""
    marks: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    groups: int = 0             # fingerprints held by more than one row
    duplicates: int = 0         # rows after the first of a group of one class
    conflicting: int = 0        # rows of groups under more than one class
    rejected: int = 0           # rows rejected for either (0 under keep)
    new_found: int = 0          # duplicates and conflicting rows among this run's new records
    new_rejected: int = 0       # of which rejected
    cross_split: int = 0        # groups whose accepted rows stay in more than one split

    def counts(self) -> dict[str, int]:
        return {"groups": self.groups, "duplicates": self.duplicates, "conflicting": self.conflicting,
                "rejected": self.rejected, "cross_split": self.cross_split}


def content_fingerprint(content: Column) -> Column:
    """The fingerprint of an accepted row from the column that holds its prepared content (null when rejected)."""
    return F.when(F.col("reason").isNull() & content.isNotNull(), F.xxhash64(content))


def carried_fingerprints(df: DataFrame | None, content: Column | None) -> DataFrame | None:
    """Rows carried from the previous snapshot with their fingerprint: as stored, or (a snapshot written before
    fingerprints) computed from ``content`` where the stored content gives it (images), else null (texts: their
    normalised text is not stored; such rows take no part in the search until a full run)."""
    if df is None or (FINGERPRINT in df.columns and content is None):
        return df
    computed = content_fingerprint(content) if content is not None else F.lit(None).cast("long")
    if FINGERPRINT in df.columns:
        computed = F.coalesce(F.col(FINGERPRINT), computed)
    return df.withColumn(FINGERPRINT, computed)


def members(df: DataFrame, *, source: Column, name: Column, carried: bool) -> DataFrame:
    """The columns ``find`` groups: the accepted rows of ``df`` with a fingerprint."""
    return (df.where(F.col("reason").isNull() & F.col(FINGERPRINT).isNotNull())
            .select(F.col(FINGERPRINT), source.alias("source"), name.alias("name"), F.col("split"),
                    F.lit(carried).alias("carried")))


def find(parts: list[DataFrame]) -> list[list[Member]]:
    """The groups of more than one row among ``parts`` (``members``) (a Spark job: the caller names it)."""
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    grouped = (union.groupBy(FINGERPRINT)
               .agg(F.count(F.lit(1)).alias("n"),
                    F.collect_list(F.struct("carried", "source", "name", "split")).alias("rows"))
               .where(F.col("n") > 1))
    return [[Member(m["source"], m["name"], m["split"], m["carried"]) for m in row["rows"]]
            for row in grouped.collect()]


def decide(groups: list[list[Member]], *, mode: str) -> Found:
    """Marks and counts of the duplicate ``groups``. The row kept of a group of one class is the first carried from
    the previous snapshot, else the first by source name."""
    if mode not in MODES:
        raise ValueError(f"duplicates {mode!r} is not one of {', '.join(MODES)}")
    found = Found()
    for group in groups:
        group = sorted(group, key=lambda m: (not m.carried, m.source))
        found.groups += 1
        names = sorted({m.name for m in group if m.name is not None})
        carried_split = min((m.split for m in group if m.carried), default=None)
        conflicting = len(names) > 1
        for i, m in enumerate(group):
            reason = None
            if conflicting:
                found.conflicting += 1
                others = [o.source for o in group if o is not m][:SHOWN]
                reason = (f"{CONFLICTING}: the same content is labelled {', '.join(names)} (also "
                          f"{', '.join(others)}{', ...' if len(group) - 1 > SHOWN else ''})")
            elif i:
                found.duplicates += 1
                reason = f"{DUPLICATE}: same content as {group[0].source}"
            if reason and not m.carried:
                found.new_found += 1
            reject = reason is not None and mode == "reject"
            found.rejected += reject
            found.new_rejected += reject and not m.carried
            move = carried_split if not m.carried and carried_split not in (None, m.split) and not reject else None
            if reject or move:
                found.marks[m.source] = (move, reason if reject else None)
        kept = {found.marks.get(m.source, (None, None))[0] or m.split for m in group
                if found.marks.get(m.source, (None, None))[1] is None}
        found.cross_split += len(kept) > 1
    return found


def apply(df: DataFrame, found: Found, *, spark, source: Column) -> DataFrame:
    """``df`` with the marks of ``found``: ``split`` moved and ``reason`` set where marked (a broadcast join on
    ``source``, which keeps ``df``'s partitions and their row order)."""
    if not found.marks:
        return df
    marks = spark.createDataFrame([(s, split, reason) for s, (split, reason) in sorted(found.marks.items())],
                                  "_bt_source string, _bt_split string, _bt_reason string")
    return (df.withColumn("_bt_source", source).join(F.broadcast(marks), "_bt_source", "left")
            .withColumn("split", F.coalesce(F.col("_bt_split"), F.col("split")))
            .withColumn("reason", F.coalesce(F.col("reason"), F.col("_bt_reason")))
            .drop("_bt_source", "_bt_split", "_bt_reason"))


def budget_problem(copies: int, records: int, budget: float) -> str | None:
    """Why ``copies`` (duplicates and conflicting records) exceed ``duplicates_budget``, a fraction of the
    snapshot's ``records``, or None."""
    if records and copies / records > budget:
        return (f"{copies} of the snapshot's {records} records are copies of another record's content "
                f"({copies / records:.1%}), more than duplicates_budget {budget:.1%}")
    return None
