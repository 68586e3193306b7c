"""One mechanism for every preprocessing job: decide what a run must do, carry the previous snapshot's rows
forward, and commit a new snapshot.

* ``plan``: list the inputs (path, size, modification time) and compare them with the current snapshot's. Same
  inputs and config: nothing to do. New or changed files: only they are processed, and the rows of unchanged files
  are carried over from the previous snapshot (rows of changed and removed files are dropped, so there are no
  duplicates). Another config, or ``--mode overwrite``: everything is processed again. A brake, before any Spark work
  beyond the listing (``check_removals``): an input that lists no files is refused (a first snapshot has nothing to
  commit; after one, it is an unmounted volume or an emptied folder far more often than a wish), and so, unless
  ``--allow-removals``, is an incremental run that removes more than ``max_removed_fraction`` of the previous
  snapshot's input files, or every file of a class it has rows of.
* ``previous_records``: the previous snapshot's rows and rejected records that stay, shaped like new records (their
  class by name, mapped again with the run's label map).
* ``group_counts`` / ``Outcomes``: one aggregation for everything a run must know before it writes: the class
  (label) names seen, the kinds of label (numbers or text), what each record became (accepted, or the category of
  its rejection), the rows and bytes of every split, the sequence lengths, and the accepted rows of each split per
  input partition (what ``routing.route`` balances the row groups with). Grouped by partition, split, name, label
  kind, outcome and whether the row was carried: few groups, whatever the size of the data. The rejections the
  label map makes (a name not in it, the rarer label kind when numbers and text mix) are applied to the counts
  exactly as ``pipelines.labels`` applies them to the rows, so the counts need no second pass.
* ``finish``: the error budget, a snapshot of at least one row and (unless ``allow_single_class``) two classes,
  ``inputs.parquet``, then the manifest (the commit).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import DatasetError, RejectBudgetError, RemovalsError, UsageError
from core.logs import with_article
from core.paths import filesystem, join
from dataset import layout, manifest, snapshots
from dataset.manifest import InputCounts, Lineage, Manifest, SplitCounts
from pipelines import duplicates, inputs, reading, session

log = logging.getLogger(__name__)

MODES = ("incremental", "overwrite", "error")
IGNORED_CONFIG_KEYS = ("master", "spark_conf", "mode", "max_reject_fraction",  # do not change what is written
                       "max_removed_fraction", "allow_single_class", "strict", "duplicates_budget")


# Keys added after snapshots were made, at the value that reads as before: fingerprinted as if absent, so that the
# first run after an upgrade is not a full one for a setting nobody changed.
NEW_KEY_DEFAULTS = {"image": {"follow_links": False, "duplicates": "reject", "near_duplicates": True},
                    "sequence": {"follow_links": False, "max_file_bytes": 64 << 30, "duplicates": "reject"}}


def config_fingerprint(config: dict[str, Any], kind: str) -> str:
    new = NEW_KEY_DEFAULTS.get(kind, {})
    kept = {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS and not (k in new and v == new[k])}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bigtrain_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bigtrain")
    except metadata.PackageNotFoundError:  # running from the zip shipped with --py-files
        return "unknown"


def list_inputs(listing: inputs.Listing) -> dict[str, tuple[str, int, int]]:
    """relative path -> (path, size, modification time in ms) of every entry of the run's listing (the files it
    cannot read included: they are inputs that become rejected records). Paths are in the one spelling of
    ``core.paths`` (``big cat/a b.png``), as ``inputs.parquet`` stores them."""
    return {e.relpath: (e.path, e.size, e.mtime) for e in listing.entries}


@dataclass
class RunPlan:
    dataset_url: str
    kind: str
    input_url: str
    mode: str
    inputs: dict[str, tuple[str, int, int]]
    config: dict[str, Any]
    previous_url: str | None = None
    previous: Manifest | None = None
    diff: snapshots.InputDiff | None = None
    full: bool = True
    reason: str = "first snapshot"
    snapshot_id: str | None = None
    snapshot_url: str | None = None
    started: float = field(default_factory=time.time)
    listing: inputs.Listing | None = None

    @property
    def nothing_to_do(self) -> bool:
        return not self.full and self.diff is not None and not self.diff.any

    def entries_to_read(self) -> list[inputs.Entry]:
        """The listed input files to process: all of them, or the new and changed ones."""
        if self.full:
            return list(self.listing.entries)
        wanted = set(self.diff.added + self.diff.changed)
        return [e for e in self.listing.entries if e.relpath in wanted]


def plan(*, dataset_url: str, input_url: str, kind: str, config: dict[str, Any], mode: str,
         follow_links: bool, max_removed_fraction: float, allow_removals: bool = False,
         class_of: Callable[[str], str | None] | None = None) -> RunPlan:
    """What this run must do; when there is work, a fresh staging snapshot to write it to. ``check_removals``
    refuses the run first when its input lost too much; ``class_of`` is the class of an input file's path where
    the path tells it (images: the class folder), None where it does not (texts: labels are inside the records)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    listing = inputs.list_files(input_url, follow_links=follow_links)
    run = RunPlan(dataset_url, kind, input_url, mode, list_inputs(listing), config, listing=listing)
    committed, _ = layout.snapshot_ids(dataset_url)
    previous_inputs = None
    if committed:
        run.previous_url = join(dataset_url, layout.SNAPSHOTS_DIR, committed[-1])
        run.previous = manifest.read(run.previous_url)
        previous_inputs = _decide(run)
    check_removals(run, previous_inputs, max_removed_fraction=max_removed_fraction, allow_removals=allow_removals,
                   class_of=class_of)
    if run.nothing_to_do:
        log.info("inputs and config unchanged since snapshot %s: nothing to do", committed[-1])
        return run
    log.info("%s run: %s", "full" if run.full else "incremental", run.reason)
    run.snapshot_id, run.snapshot_url = snapshots.begin(dataset_url)
    return run


def _decide(run: RunPlan) -> dict[str, tuple[str, int, int]] | None:
    """Full or incremental; for an incremental run, the diff and the previous snapshot's input listing (returned)."""
    prev = run.previous
    if prev.kind != run.kind:  # even with --mode overwrite: a new snapshot of another kind would become current
        raise UsageError(f"--output {run.dataset_url} holds {with_article(prev.kind)} dataset (snapshot "
                         f"{prev.snapshot_id}); this job writes {with_article(run.kind)} dataset: give another folder")
    if run.mode == "error":
        raise DatasetError(f"{run.dataset_url} already holds snapshot {prev.snapshot_id} and "
                                  "--mode error refuses to write another (use --mode incremental or overwrite)")
    if run.mode == "overwrite":
        run.reason = "--mode overwrite: every input processed again"
    elif prev.input != run.input_url:
        run.reason = f"the previous snapshot was made from {prev.input}: every input processed again"
    elif prev.snapshot.config_fingerprint != config_fingerprint(run.config, run.kind):
        changed = sorted(k for k in run.config if k not in IGNORED_CONFIG_KEYS
                         and prev.config.get(k, NEW_KEY_DEFAULTS.get(run.kind, {}).get(k)) != run.config[k])
        run.reason = f"config changed ({', '.join(changed) or 'bigtrain version'}): every input processed again"
    else:
        problems = snapshots.check(run.previous_url, prev, checksums=False)
        if problems:
            raise DatasetError(f"the previous snapshot is damaged: {problems[0]}; rerun with --mode overwrite")
        previous_inputs = snapshots.read_inputs(run.previous_url)
        run.diff = snapshots.diff_inputs({k: v[1:] for k, v in previous_inputs.items()},
                                         {k: v[1:] for k, v in run.inputs.items()})
        copies = set(copies_rejected(run.previous_url, prev)) & set(run.diff.unchanged)
        if copies:  # read again, so that a copy whose original is gone (or changed) becomes a row again
            run.diff = dataclasses.replace(run.diff, unchanged=sorted(set(run.diff.unchanged) - copies),
                                           changed=sorted(set(run.diff.changed) | copies))
        run.full, run.reason = False, run.diff.describe()
        if copies:
            run.reason += f" ({len(copies)} of the changed hold records rejected as copies, read again)"
        return previous_inputs
    return None


def copies_rejected(snapshot_url: str, snapshot: Manifest) -> list[str]:
    """The input files (relative paths) of the records a snapshot rejected as copies of another record's content
    (``pipelines.duplicates``): an incremental run reads them again, as a new copy decides again which one stays."""
    if not any(r.split(":", 1)[0] in duplicates.CATEGORIES for r in snapshot.rejected_by_reason):
        return []
    fs, root = filesystem(join(snapshot_url, layout.REJECTED_DIR))
    column = "relpath" if snapshot.kind == "image" else "source"
    found: set[str] = set()
    for rel in sorted(snapshot.files):
        if rel.startswith(layout.REJECTED_DIR + "/") and rel.endswith(".parquet"):
            table = layout.read_parquet(fs, f"{root.rstrip('/')}/{rel.split('/', 1)[1]}", columns=[column, "reason"])
            for key, reason in zip(table.column(column).to_pylist(), table.column("reason").to_pylist()):
                if key is not None and (reason or "").split(":", 1)[0] in duplicates.CATEGORIES:
                    found.add(key if snapshot.kind == "image" else key.rsplit(":", 1)[0])
    return sorted(found)


def find_duplicates(spark: SparkSession, new: DataFrame, carried: DataFrame | None, *, source: Column,
                    name: Column, mode: str, fractions: dict[str, float], records: int,
                    near: bool = False) -> duplicates.Found:
    """The copies (exact, and near with ``near``) among the accepted rows of ``new`` and ``carried``
    (``pipelines.duplicates``), about ``records`` in all (it sizes the search's shuffle), in one Spark job;
    nothing under ``duplicates: ignore``."""
    if mode == "ignore":
        return duplicates.Found()
    parts = [duplicates.members(new, source=source, name=name, carried=False, near=near)]
    if carried is not None:
        parts.append(duplicates.members(carried, source=source, name=name, carried=True, near=near))
    most = int(spark.conf.get("spark.sql.shuffle.partitions"))
    with session.spark_job(spark, "duplicates", "copies of one content among the records"):
        rows = duplicates.search(parts, near=near, partitions=duplicates.partitions(records, near=near, most=most))
        found = duplicates.decide(rows, mode=mode, fractions=fractions, near=near)
    if found.groups or found.near_groups:
        log.info("copies of one content: %d groups of exact copies (%d copies of a row of the same class, %d rows "
                 "under conflicting labels; %s)%s", found.groups, found.duplicates, found.conflicting,
                 f"{found.rejected} rejected" if mode == "reject" else "kept: duplicates: keep",
                 f", {found.near_groups} groups of near copies ({found.near_rows} rows, each group in one split)"
                 if near else "")
    return found


def carried_records(run: RunPlan) -> int:
    """At most how many records of the previous snapshot this run carries (none on a full run)."""
    return 0 if run.full or run.previous is None else run.previous.records_read


def duplicate_counts(found: duplicates.Found, mode: str) -> manifest.DuplicateCounts | None:
    """The manifest's counts of the copies ``found`` (None under ``duplicates: ignore``: nothing was looked for)."""
    return None if mode == "ignore" else manifest.DuplicateCounts(mode=mode, **found.counts())


def check_removals(run: RunPlan, previous_inputs: dict[str, tuple[str, int, int]] | None, *,
                   max_removed_fraction: float, allow_removals: bool,
                   class_of: Callable[[str], str | None] | None) -> None:
    """A ``RemovalsError`` when the input lists no files, and, unless ``allow_removals``, when an incremental run
    (``previous_inputs``: the previous snapshot's listing) would lose what ``lost_inputs`` names."""
    prev = run.previous
    if not run.inputs and prev is None:
        raise RemovalsError(f"--input {run.input_url} lists no files: nothing to commit (the first snapshot of "
                            f"{run.dataset_url} needs input)")
    if not run.inputs:  # --allow-removals would only lead to a snapshot of no row, which finish refuses
        raise RemovalsError(f"--input {run.input_url} lists no files, where snapshot {prev.snapshot_id} holds rows "
                            f"of {prev.snapshot.inputs.files} input files (an unmounted volume, an emptied folder?): "
                            "nothing was committed; --allow-removals does not take an empty input, as a snapshot "
                            "needs at least one row")
    if previous_inputs is None or allow_removals:
        return
    lost = lost_inputs(previous_inputs, run.inputs, rows_per_class=rows_per_class(prev.splits),
                       max_removed_fraction=max_removed_fraction, class_of=class_of)
    if lost:
        raise RemovalsError(f"--input {run.input_url}: since snapshot {prev.snapshot_id}, {lost}; nothing was "
                            "committed (an unmounted volume, a moved folder?): if they were removed on purpose, rerun "
                            "with --allow-removals")


def lost_inputs(previous: dict[str, tuple[str, int, int]], current: dict[str, tuple[str, int, int]], *,
                rows_per_class: dict[str, int], max_removed_fraction: float,
                class_of: Callable[[str], str | None] | None = None) -> str | None:
    """What vanished from the input listing (relative path -> (path, size, mtime)) when it is more than
    ``max_removed_fraction`` of the previous files, or every file of a class that has rows (``rows_per_class``;
    a file's class is ``class_of`` its path): how many of how many, the first paths, the classes; else None."""
    removed = sorted(k for k in previous if k not in current)
    if not removed:
        return None
    lost: set[str | None] = set()
    if class_of is not None:
        lost = {class_of(previous[k][0]) for k in removed} & {name for name, n in rows_per_class.items() if n}
        for path, _, _ in current.values():  # stops once a file of each such class is found
            if not lost:
                break
            lost.discard(class_of(path))
    too_many = len(removed) > max_removed_fraction * len(previous)
    if not too_many and not lost:
        return None
    share = f"{len(removed) / len(previous):.1%}" + (f", more than max_removed_fraction {max_removed_fraction:.1%}"
                                                      if too_many else "")
    said = (f"{len(removed)} of the {len(previous)} input files are gone ({share}): {', '.join(removed[:5])}"
            f"{', ...' if len(removed) > 5 else ''}")
    if lost:
        said += f"; classes that lost all their files: {', '.join(sorted(lost))}"
    return said


def rows_per_class(splits: dict[str, SplitCounts]) -> dict[str, int]:
    """Rows of each class over every split (their ``per_class``)."""
    rows: dict[str, int] = {}
    for counts in splits.values():
        for name, n in counts.per_class.items():
            rows[name] = rows.get(name, 0) + n
    return rows


def previous_records(spark: SparkSession, run: RunPlan, *, key: Column, name_col: str) -> DataFrame | None:
    """Rows and rejected records of the previous snapshot whose input file is unchanged, with ``split``, ``reason``
    and, in ``name_col``, the name of each row's class in the previous snapshot (``label`` dropped: the job maps
    the names again with this run's label map, as it maps its new records)."""
    if run.full or not run.diff.unchanged:
        return None
    prev = run.previous
    parts = [spark.read.parquet(reading.spark_path(join(run.previous_url, name)))
             .withColumn("split", F.lit(name)).withColumn("reason", F.lit(None).cast("string"))
             for name, counts in prev.splits.items() if counts.rows]
    if prev.rejected:
        parts.append(spark.read.parquet(reading.spark_path(join(run.previous_url, layout.REJECTED_DIR))))
    if not parts:
        return None
    kept = spark.createDataFrame([(k,) for k in run.diff.unchanged], "_bt_key string")
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part, allowMissingColumns=True)
    names = session.constant_map({i: n for n, i in prev.class_to_index.items()}, "int", "string")
    name = names[F.col("label")] if "label" in out.columns and prev.class_to_index else F.lit(None).cast("string")
    if name_col in out.columns:  # rejected image records keep their class folder
        name = F.coalesce(name, F.col(name_col))
    return (out.withColumn("_bt_key", key).join(F.broadcast(kept), "_bt_key", "left_semi").drop("_bt_key")
            .withColumn(name_col, name).drop("label"))


MEASURES = ("bytes", "ids", "tokens")  # summed: payload bytes, token ids to encode (text), tokens before truncation


def projection(df: DataFrame, *, name: Column, carried: bool, is_number: Column | None = None,
               bytes_: Column | None = None, ids: Column | None = None, tokens: Column | None = None,
               max_length: int | None = None) -> DataFrame:
    """The columns ``group_counts`` reads, from new records (``carried=False``) or from the previous snapshot's
    rows. ``bytes_`` is the payload as written (encoded images, token-id bytes of carried rows); ``ids`` the token
    ids a new row will be encoded with (their width is known once the vocabulary is); ``tokens`` the length before
    truncation to ``max_length`` (sequence statistics)."""
    zero = F.lit(0).cast("long")
    truncated = (F.when(tokens > max_length, 1).otherwise(0) if tokens is not None and max_length is not None
                 else F.lit(None).cast("int"))
    return df.select(
        F.col("split"), name.alias("name"),
        (is_number if is_number is not None else F.lit(None)).cast("boolean").alias("is_number"),
        F.substring_index("reason", ":", 1).alias("category"), F.lit(carried).alias("carried"),
        (bytes_ if bytes_ is not None else zero).cast("long").alias("bytes"),
        (ids if ids is not None else zero).cast("long").alias("ids"),
        (tokens if tokens is not None else F.lit(None)).cast("long").alias("tokens"),
        truncated.alias("truncated"))


def group_counts(parts: list[DataFrame]) -> DataFrame:
    """Rows, sums and the longest sequence per (partition of the union of ``parts``, split, name, label kind,
    outcome category, carried). ``parts`` are ``projection``s, in the order the written rows are unioned in, so
    that ``pid`` is the partition the write sees each row in. The groups are few and all collected on the driver:
    their final aggregation is one task (coalesced), not spark.sql.shuffle.partitions tasks of a few rows each
    (16 such tasks took 0.13-0.29 s of a text run of 6.5 s on 2 cores)."""
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    keys = [F.spark_partition_id().alias("pid"), "split", "name", "is_number", "category", "carried"]
    return union.groupBy(*keys).agg(F.count(F.lit(1)).alias("rows"), *[F.sum(m).alias(m) for m in MEASURES],
                                    F.max("tokens").alias("longest"), F.sum("truncated").alias("truncated")
                                    ).coalesce(1)


MIXED_LABELS = "mixed label types"   # pipelines.labels.reject_label_kind's reason, up to its first ':'
UNMAPPED_LABEL = "missing label"     # pipelines.labels.assign_labels's reason for a name not in the map


@dataclass
class Outcomes:
    """The collected groups of ``group_counts`` (dicts of its columns)."""
    groups: list[dict[str, Any]]

    def names(self, *, accepted_only: bool, reject_kind: bool | None = None) -> list[str]:
        """Names of this run's new records: of every record (images: a class folder is a class even when its files
        are all rejected), or only of the accepted ones, those of the label kind ``reject_kind`` left out."""
        return sorted({g["name"] for g in self.groups if not g["carried"] and g["name"] is not None
                       and (not accepted_only or (g["category"] is None and (reject_kind is None
                                                                            or g["is_number"] != reject_kind)))})

    def label_kinds(self) -> dict[bool, int]:
        """Accepted new records labelled with numbers (True) and with text (False)."""
        kinds: dict[bool, int] = {}
        for g in self.groups:
            if not g["carried"] and g["category"] is None and g["is_number"] is not None:
                kinds[g["is_number"]] = kinds.get(g["is_number"], 0) + g["rows"]
        return kinds

    def resolve(self, class_to_index: dict[str, int], *, reject_kind: bool | None = None) -> list[dict[str, Any]]:
        """The groups as the written rows will be: ``label`` from the map, and ``category`` set where the map
        rejects (a name not in it; the label kind ``reject_kind``)."""
        out = []
        for g in self.groups:
            category = g["category"]
            if category is None and reject_kind is not None and g["is_number"] == reject_kind and not g["carried"]:
                category = MIXED_LABELS
            elif category is None and g["name"] not in class_to_index:
                category = UNMAPPED_LABEL
            out.append({**g, "category": category, "label": class_to_index.get(g["name"])})
        return out

    def lengths(self, *, reject_kind: bool | None = None) -> dict[str, Any]:
        """Longest, mean and truncated sequence lengths of the new records accepted before labelling (those the
        label map rejects count, those of the rejected label kind do not), as the manifest keeps them."""
        mine = [g for g in self.groups if not g["carried"] and g["category"] is None
                and (reject_kind is None or g["is_number"] != reject_kind)]
        rows = sum(g["rows"] for g in mine)
        longest = max((g["longest"] for g in mine if g["longest"] is not None), default=None)
        return {"rows": rows, "longest": longest,
                "mean_length": sum(g["tokens"] or 0 for g in mine) / rows if rows else None,
                "truncated": sum(g["truncated"] or 0 for g in mine)}


def processed(resolved: list[dict[str, Any]]) -> tuple[int, int]:
    """(records, rejected) of this run's new records."""
    new = [g for g in resolved if not g["carried"]]
    return sum(g["rows"] for g in new), sum(g["rows"] for g in new if g["category"] is not None)


def split_counts(summary: dict[str, Any]) -> dict[str, SplitCounts]:
    """The manifest's rows per split from ``writing.write_splits``'s summary (what is on disk)."""
    return {name: SplitCounts(rows=info["rows"], row_groups=info["row_groups"], per_class=info["per_class"])
            for name, info in summary["splits"].items()}


def finish(run: RunPlan, draft: Manifest, *, processed: tuple[int, int], max_reject_fraction: float,
           allow_single_class: bool = False, strict: bool = False, copies: duplicates.Found | None = None,
           duplicates_budget: float = 1.0) -> Manifest:
    """Check the error budgets: ``max_reject_fraction`` on this run's records, copies of another record's content
    left out; ``duplicates_budget`` on the snapshot's records (every copy is looked at again by each run); and the classes of the snapshot's rows
    (``check_classes``), then commit the snapshot: ``draft`` (what the job wrote) with the run's lineage and the
    snapshot's files; returns the committed manifest."""
    read, rejected = processed
    copies = copies or duplicates.Found()
    problem = duplicates.budget_problem(copies.duplicates + copies.conflicting, draft.records_read, duplicates_budget)
    if problem:
        raise RejectBudgetError(f"{problem}: snapshot {run.snapshot_url} was not committed; the copies and what "
                                f"they copy are in {join(run.snapshot_url, layout.REJECTED_DIR)} (under "
                                "duplicates: keep, in the splits); raise duplicates_budget if they are expected")
    rejected -= copies.new_rejected
    if read and rejected / read > max_reject_fraction:
        raise RejectBudgetError(
            f"{rejected} of {read} records read in this run were rejected ({rejected / read:.1%}), more than "
            f"max_reject_fraction {max_reject_fraction:.1%}: snapshot {run.snapshot_url} was not committed; the "
            f"rejected records and their reasons are in {join(run.snapshot_url, layout.REJECTED_DIR)}")
    check_classes(run, draft, processed=processed, allow_single_class=allow_single_class)
    if strict:
        check_trained_classes(run, draft)
    snapshots.write_inputs(run.snapshot_url, run.inputs)
    diff = run.diff
    lineage = Lineage(
        id=run.snapshot_id, parent=run.previous.snapshot_id if run.previous else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started)),
        committed=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        run="full" if run.full else "incremental", reason=run.reason, mode=run.mode,
        bigtrain_version=bigtrain_version(), config_fingerprint=config_fingerprint(run.config, run.kind),
        inputs=InputCounts(file=layout.INPUTS_FILE, files=len(run.inputs), bytes=sum(v[1] for v in run.inputs.values()),
                           processed=len(run.inputs) if run.full else len(diff.added) + len(diff.changed),
                           added=len(diff.added) if diff else None, changed=len(diff.changed) if diff else None,
                           removed=len(diff.removed) if diff else None),
        records_processed=read, rejected_processed=rejected)
    return snapshots.commit(run.snapshot_url, draft.replace(snapshot=lineage))


def check_classes(run: RunPlan, draft: Manifest, *, processed: tuple[int, int], allow_single_class: bool) -> None:
    """A ``RemovalsError`` for a snapshot of no row, or, unless ``allow_single_class``, of rows of one class: a
    classifier of one class is right every time and learns nothing."""
    classes = [name for name, n in rows_per_class(draft.splits).items() if n]
    if not classes:
        raise RemovalsError(f"--input {run.input_url}: no record was accepted ({processed[0]} read in this run, "
                            f"{processed[1]} rejected): snapshot {run.snapshot_url} was not committed, a snapshot "
                            "needs at least one row")
    if len(classes) < 2 and not allow_single_class:
        raise RemovalsError(f"--input {run.input_url}: every row is of one class, {classes[0]}: snapshot "
                            f"{run.snapshot_url} was not committed (a model of one class is right every time and "
                            "learns nothing); set the config key allow_single_class: true to commit it anyway")


def unchanged_summary(run: RunPlan) -> dict[str, Any]:
    prev = run.previous
    splits = {name: {**dataclasses.asdict(counts), "url": join(run.previous_url, name)}
              for name, counts in prev.splits.items()}
    return {"unchanged": True, "snapshot": prev.snapshot_id, "output": run.previous_url,
            "records_read": prev.records_read, "rows_written": prev.rows, "rejected": prev.rejected,
            "rejected_by_reason": prev.rejected_by_reason, "splits": splits,
            "rejected_url": join(run.previous_url, layout.REJECTED_DIR), "inputs": len(run.inputs)}


def check_trained_classes(run: RunPlan, draft: Manifest) -> None:
    """Under ``strict: true``, a ``RemovalsError`` when a class of the label map has no row in the train split (a
    label fixed in ``labels`` that never occurs, a stray label with its few rows in other splits): a model never
    learns it. Without ``strict`` the job's summary warns of it."""
    per_class = draft.splits["train"].per_class if "train" in draft.splits else {}
    untrained = [name for name, n in per_class.items() if not n]
    if untrained:
        shown = ", ".join(untrained[:10]) + (", ..." if len(untrained) > 10 else "")
        raise RemovalsError(f"--input {run.input_url}: train has no rows of {len(untrained)} of the {len(per_class)} "
                            f"classes ({shown}): snapshot {run.snapshot_url} was not committed (strict: true); fix "
                            "the labels, or set strict: false to commit it with a warning")
