"""One mechanism for every preprocessing job: decide what a run must do, carry the previous snapshot's rows
forward, and commit a new snapshot.

* ``plan``: list the inputs (path, size, modification time) and compare them with the current snapshot's. Same
  inputs and config: nothing to do. New or changed files: only they are processed, and the rows of unchanged files
  are carried over from the previous snapshot (rows of changed and removed files are dropped, so there are no
  duplicates). Another config, or ``--mode overwrite``: everything is processed again.
* ``previous_records``: the previous snapshot's rows and rejected records that stay, shaped like new records (their
  class by name, mapped again with the run's label map).
* ``group_counts`` / ``Outcomes``: one aggregation for everything a run must know before it writes: the class
  (label) names seen, the kinds of label (numbers or text), what each record became (accepted, or the category of
  its rejection), the rows and bytes of every split, the sequence lengths, and the accepted rows of each split per
  input partition (what ``storage.route`` balances the row groups with). Grouped by partition, split, name, label
  kind, outcome and whether the row was carried: few groups, whatever the size of the data. The rejections the
  label map makes (a name not in it, the rarer label kind when numbers and text mix) are applied to the counts
  exactly as ``pipelines.labels`` applies them to the rows, so the counts need no second pass.
* ``finish``: the error budget, ``inputs.parquet``, then the manifest (the commit).
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

from core.errors import DatasetError, RejectBudgetError, UsageError
from core.logs import with_article
from core.paths import from_encoded_url, join, normalise_url
from dataset import layout, manifest, snapshots
from dataset.manifest import InputCounts, Lineage, Manifest, SplitCounts
from pipelines import storage

log = logging.getLogger(__name__)

MODES = ("incremental", "overwrite", "error")
IGNORED_CONFIG_KEYS = ("master", "spark_conf", "mode", "max_reject_fraction")  # do not change what is written


def config_fingerprint(config: dict[str, Any]) -> str:
    kept = {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bigtrain_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bigtrain")
    except metadata.PackageNotFoundError:  # running from the zip shipped with --py-files
        return "unknown"


def list_inputs(spark: SparkSession, input_url: str, relpath_of: Callable[[str], str]
                ) -> dict[str, tuple[str, int, int]]:
    """relative path -> (path, size, modification time in ms) of every file Spark reads below ``input_url``.

    Spark's ``binaryFile`` listing with the content column pruned (no file is read); zero-byte files, which its
    scan skips, come from the same listing with size 0. Paths are in the one spelling of ``core.paths``
    (``big cat/a b.png``, not the listing's URI-encoded ``big%20cat/a%20b.png``), as ``inputs.parquet`` stores them.
    """
    files = storage.read_binary_files(spark, input_url)
    with storage.spark_job(spark, "list", f"input files below {input_url}"):
        rows = files.select("path", "length", F.expr("unix_millis(modificationTime)").alias("mtime")).collect()
    found = {normalise_url(r["path"]): (int(r["length"]), int(r["mtime"])) for r in rows}
    for path in map(from_encoded_url, files.inputFiles()):
        found.setdefault(path, (0, 0))
    return {relpath_of(path): (path, size, mtime) for path, (size, mtime) in found.items()}


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

    @property
    def nothing_to_do(self) -> bool:
        return not self.full and self.diff is not None and not self.diff.any

    def paths_to_read(self) -> list[str] | None:
        """The input files to process, or None for the whole input."""
        if self.full:
            return None
        return [self.inputs[k][0] for k in self.diff.added + self.diff.changed]


def plan(spark: SparkSession, *, dataset_url: str, input_url: str, kind: str, config: dict[str, Any], mode: str,
         relpath_of: Callable[[str], str]) -> RunPlan:
    """What this run must do; when there is work, a fresh staging snapshot to write it to."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    run = RunPlan(dataset_url, kind, input_url, mode, list_inputs(spark, input_url, relpath_of), config)
    committed, _ = layout.snapshot_ids(dataset_url)
    if committed:
        run.previous_url = join(dataset_url, layout.SNAPSHOTS_DIR, committed[-1])
        run.previous = manifest.read(run.previous_url)
        _decide(run)
    if run.nothing_to_do:
        log.info("inputs and config unchanged since snapshot %s: nothing to do", committed[-1])
        return run
    log.info("%s run: %s", "full" if run.full else "incremental", run.reason)
    run.snapshot_id, run.snapshot_url = snapshots.begin(dataset_url)
    return run


def _decide(run: RunPlan) -> None:
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
    elif prev.snapshot.config_fingerprint != config_fingerprint(run.config):
        changed = sorted(k for k in run.config if k not in IGNORED_CONFIG_KEYS
                         and prev.config.get(k) != run.config[k])
        run.reason = f"config changed ({', '.join(changed) or 'bigtrain version'}): every input processed again"
    else:
        problems = snapshots.check(run.previous_url, prev, checksums=False)
        if problems:
            raise DatasetError(f"the previous snapshot is damaged: {problems[0]}; rerun with --mode overwrite")
        run.diff = snapshots.diff_inputs({k: v[1:] for k, v in snapshots.read_inputs(run.previous_url).items()},
                                         {k: v[1:] for k, v in run.inputs.items()})
        run.full, run.reason = False, run.diff.describe()


def previous_records(spark: SparkSession, run: RunPlan, *, key: Column, name_col: str) -> DataFrame | None:
    """Rows and rejected records of the previous snapshot whose input file is unchanged, with ``split``, ``reason``
    and, in ``name_col``, the name of each row's class in the previous snapshot (``label`` dropped: the job maps
    the names again with this run's label map, as it maps its new records)."""
    if run.full or not run.diff.unchanged:
        return None
    prev = run.previous
    parts = [spark.read.parquet(join(run.previous_url, name))
             .withColumn("split", F.lit(name)).withColumn("reason", F.lit(None).cast("string"))
             for name, counts in prev.splits.items() if counts.rows]
    if prev.rejected:
        parts.append(spark.read.parquet(join(run.previous_url, layout.REJECTED_DIR)))
    if not parts:
        return None
    kept = spark.createDataFrame([(k,) for k in run.diff.unchanged], "_bt_key string")
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part, allowMissingColumns=True)
    names = F.create_map(*[F.lit(x) for idx, name in sorted((i, n) for n, i in prev.class_to_index.items())
                           for x in (idx, name)])
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
    that ``pid`` is the partition the write sees each row in."""
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    keys = [F.spark_partition_id().alias("pid"), "split", "name", "is_number", "category", "carried"]
    return union.groupBy(*keys).agg(F.count(F.lit(1)).alias("rows"), *[F.sum(m).alias(m) for m in MEASURES],
                                    F.max("tokens").alias("longest"), F.sum("truncated").alias("truncated"))


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
    """The manifest's rows per split from ``storage.write_splits``'s summary (what is on disk)."""
    return {name: SplitCounts(rows=info["rows"], row_groups=info["row_groups"], per_class=info["per_class"])
            for name, info in summary["splits"].items()}


def finish(run: RunPlan, draft: Manifest, *, processed: tuple[int, int], max_reject_fraction: float) -> Manifest:
    """Check the error budget on this run's records, then commit the snapshot: ``draft`` (what the job wrote) with
    the run's lineage and the snapshot's files; returns the committed manifest."""
    read, rejected = processed
    if read and rejected / read > max_reject_fraction:
        raise RejectBudgetError(
            f"{rejected} of {read} records read in this run were rejected ({rejected / read:.1%}), more than "
            f"max_reject_fraction {max_reject_fraction:.1%}: snapshot {run.snapshot_url} was not committed; the "
            f"rejected records and their reasons are in {join(run.snapshot_url, layout.REJECTED_DIR)}")
    snapshots.write_inputs(run.snapshot_url, run.inputs)
    diff = run.diff
    lineage = Lineage(
        id=run.snapshot_id, parent=run.previous.snapshot_id if run.previous else None,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started)),
        committed=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        run="full" if run.full else "incremental", reason=run.reason, mode=run.mode,
        bigtrain_version=bigtrain_version(), config_fingerprint=config_fingerprint(run.config),
        inputs=InputCounts(file=layout.INPUTS_FILE, files=len(run.inputs), bytes=sum(v[1] for v in run.inputs.values()),
                           processed=len(run.inputs) if run.full else len(diff.added) + len(diff.changed),
                           added=len(diff.added) if diff else None, changed=len(diff.changed) if diff else None,
                           removed=len(diff.removed) if diff else None),
        records_processed=read, rejected_processed=rejected)
    return snapshots.commit(run.snapshot_url, draft.replace(snapshot=lineage))


def unchanged_summary(run: RunPlan) -> dict[str, Any]:
    prev = run.previous
    splits = {name: {**dataclasses.asdict(counts), "url": join(run.previous_url, name)}
              for name, counts in prev.splits.items()}
    return {"unchanged": True, "snapshot": prev.snapshot_id, "output": run.previous_url,
            "records_read": prev.records_read, "rows_written": prev.rows, "rejected": prev.rejected,
            "rejected_by_reason": prev.rejected_by_reason, "splits": splits,
            "rejected_url": join(run.previous_url, layout.REJECTED_DIR), "inputs": len(run.inputs)}
