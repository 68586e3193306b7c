"""The text/token-sequence recipe: JSON Lines, CSV or Parquet records -> a new snapshot of Petastorm splits, the
vocabulary, the label map, a ``rejected/`` table and the manifest, with Spark.

Extract (lines with their source, read and parsed in the Python workers), transform (tokenise, vocabulary, labels,
ids, split), load into a new snapshot, committed last. ``jobs/preprocess_sequences.py`` parses the command line and
calls ``preprocess_sequences`` inside the shared preprocessing life cycle (``jobs.common.run_preprocessing``).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from core.config import require
from core.errors import UsageError
from dataset import layout
from dataset.layout import validate_fractions
from dataset.manifest import Manifest, SequenceSpec
from dataset.rows import FINGERPRINT, SEQUENCE
from pipelines import inputs

if TYPE_CHECKING:
    from pipelines.incremental import Outcomes

log = logging.getLogger("bigtrain.preprocess_sequences")
BYTES_PER_RECORD = 64  # a low guess of a record's bytes in the input files: it sizes the copies search's shuffle


@dataclass(frozen=True)
class PreprocessSequencesConfig:
    master: str
    format: Literal["auto", "jsonl", "csv", "parquet"]
    text_field: str
    label_field: str
    tokens_field: str             # "" = tokenise text_field instead
    tokenizer: Literal["word", "char"]
    lowercase: bool
    max_length: int
    vocab_size: int
    min_count: int
    labels: list[str | int]       # [] = every label seen; else only these (integers as their digits), the rest rejected
    split_key: Literal["content", "source"]
    splits: dict[str, float]
    row_group_size_mb: int
    ranks: int
    max_record_bytes: int
    max_file_bytes: int = 64 << 30  # larger input files are rejected unread (one worker reads a file whole)
    spark_conf: dict[str, str] = field(default_factory=dict)
    mode: Literal["incremental", "overwrite", "error"] = "incremental"
    max_reject_fraction: float = 0.1
    max_removed_fraction: float = 0.5  # an incremental run losing more of the previous input files is refused
    allow_single_class: bool = False  # commit a snapshot whose rows are all of one class
    strict: bool = False  # refuse (exit 6) a snapshot with a class the train split has no row of
    follow_links: bool = False  # read what symbolic links below --input point to (inside it only); else rejects
    duplicates: Literal["reject", "keep", "ignore"] = "reject"  # copies of one content (pipelines.duplicates)
    duplicates_budget: float = 0.1  # a run whose records duplicate others' content beyond this fraction is refused

    def validate(self, prefix: str) -> None:
        require(self.max_length >= 1, f"{prefix}.max_length", f"must be at least 1, got {self.max_length}")
        require(self.vocab_size >= 3, f"{prefix}.vocab_size", f"must be at least 3 (2 reserved ids), got {self.vocab_size}")
        require(self.min_count >= 1, f"{prefix}.min_count", f"must be at least 1, got {self.min_count}")
        require(self.row_group_size_mb > 0, f"{prefix}.row_group_size_mb", "must be positive")
        require(self.ranks >= 1, f"{prefix}.ranks", f"must be at least 1, got {self.ranks}")
        require(1 <= self.max_record_bytes <= 2**31 - 1, f"{prefix}.max_record_bytes",
                f"must be in [1, {2**31 - 1}], got {self.max_record_bytes}")
        require(self.max_file_bytes >= 1, f"{prefix}.max_file_bytes", f"must be at least 1, got {self.max_file_bytes}")
        require(bool(self.label_field), f"{prefix}.label_field", "must name a field")
        require(0 <= self.max_reject_fraction <= 1, f"{prefix}.max_reject_fraction",
                f"must be in [0, 1], got {self.max_reject_fraction}")
        require(0 <= self.max_removed_fraction <= 1, f"{prefix}.max_removed_fraction",
                f"must be in [0, 1], got {self.max_removed_fraction}")
        require(bool(self.text_field or self.tokens_field), f"{prefix}.text_field", "or tokens_field must name a field")
        require(0 <= self.duplicates_budget <= 1, f"{prefix}.duplicates_budget",
                f"must be in [0, 1], got {self.duplicates_budget}")
        try:
            validate_fractions(self.splits, key=f"{prefix}.splits")
        except ValueError as exc:
            require(False, f"{prefix}.splits", str(exc))



def preprocess_sequences(spark, *, input_url: str, output_url: str, fmt: str, config: PreprocessSequencesConfig,
                         allow_removals: bool = False) -> dict:
    """Extract (lines with their source), transform (parse, tokenise, vocabulary, labels, ids, split), load into a
    new snapshot of ``output_url``, committed last. Incremental runs process only new or changed files and keep the
    previous snapshot's vocabulary (new tokens map to unknown; --mode overwrite rebuilds it). A run that removes
    more than ``config.max_removed_fraction`` of the input files is refused unless ``allow_removals``; a file's
    name does not tell the labels of its records, so a label that lost all its records is not looked for here."""
    import numpy as np
    from pyspark.sql import functions as F

    from pipelines import duplicates, incremental, labels, session, splits, text, writing
    from pipelines.schemas import sequence_unischema

    run = incremental.plan(dataset_url=output_url, input_url=input_url, kind="sequence", config=asdict(config),
                           mode=config.mode, follow_links=config.follow_links,
                           max_removed_fraction=config.max_removed_fraction, allow_removals=allow_removals)
    if run.nothing_to_do:
        return incremental.unchanged_summary(run)
    entries = inputs.capped(run.entries_to_read(), config.max_file_bytes, "max_file_bytes")
    parsed = persisted = parse_inputs(spark, entries, fmt=fmt, config=config)
    previous = None if run.full else run.previous
    records = sum(e.size for e in entries) // BYTES_PER_RECORD + incremental.carried_records(run)
    # the token counts' tasks after their shuffle: sized as the copies search's (one per 250,000 records)
    partitions = duplicates.partitions(records, near=False, most=int(spark.conf.get("spark.sql.shuffle.partitions")))
    try:
        carried = duplicates.carried_fingerprints(incremental.previous_records(
            spark, run, key=F.regexp_extract("source", r"(?s)^(.*):[0-9]+$", 1), name_col="label_name"), None)
        found = incremental.find_duplicates(spark, parsed, carried, source=F.col("source"),
                                            name=F.col("label_name"), mode=config.duplicates,
                                            fractions=config.splits, records=records)
        parsed, carried = (duplicates.apply(df, found, spark=spark, source=F.col("source")) if df is not None
                           else None for df in (persisted, carried))
        counted, top = count_records(spark, parsed, carried, max_length=config.max_length,
                                     vocabulary=None if previous else config, partitions=partitions)
        kept, reject_kind = without_mixed_label_kinds(parsed, counted) if not config.labels else (parsed, None)
        seen = counted.names(accepted_only=True, reject_kind=reject_kind)
        fixed = [str(name) for name in config.labels]  # labels: [0, 1, 2] names the classes "0", "1", "2"
        class_to_index = labels.class_map(fixed or seen + list(previous.class_to_index if previous else []))
        if previous:
            vocabulary, dtype = layout.read_vocabulary(run.previous_url), previous.sequence.token_dtype
        else:  # counted with the records, unless a label kind was rejected since: then without its records
            vocabulary = text.make_vocabulary(top) if reject_kind is None else build_vocabulary(spark, kept, config, partitions)
            dtype = text.token_dtype(len(vocabulary))
        log.info("%d labels, vocabulary of %d tokens (%s), max length %d", len(class_to_index), len(vocabulary),
                 dtype, config.max_length)
        groups = counted.resolve(class_to_index, reject_kind=reject_kind)
        for g in groups:  # the encoded tokens of a new row: its (truncated) ids, in the dtype's width
            g["bytes"] = (g["bytes"] or 0) + (g["ids"] or 0) * np.dtype(dtype).itemsize
        processed = incremental.processed(groups)
        labelled = labels.assign_labels(kept, class_to_index=class_to_index, name_col="label_name")
        encoded = text.map_to_ids(labelled, vocabulary=session.share(spark, vocabulary),
                                  max_length=config.max_length, dtype=dtype)
        rows, unencoded = splits.with_sample_id(encoded, key_col="source"), labelled.select(*SEQUENCE.rejected)
        if carried is not None:
            kept = labels.assign_labels(carried, class_to_index=class_to_index, name_col="label_name")
            rows = rows.unionByName(kept, allowMissingColumns=True)
            unencoded = unencoded.unionByName(kept.select("source", "reason"), allowMissingColumns=True)
        summary = writing.write_splits(
            spark, rows, groups=groups, output_url=run.snapshot_url, schema=sequence_unischema(),
            label_names=list(class_to_index), row_group_size_mb=config.row_group_size_mb, ranks=config.ranks,
            rejected_columns=list(SEQUENCE.rejected), rejected_from=unencoded)
        lengths = length_stats(counted.lengths(reject_kind=reject_kind), previous)
    finally:
        persisted.unpersist()
    layout.write_vocabulary(run.snapshot_url, vocabulary)
    draft = Manifest(
        kind="sequence", input=input_url, input_format=fmt, classes=list(class_to_index),
        class_to_index=class_to_index,
        sequence=SequenceSpec(vocab_size=len(vocabulary), token_dtype=dtype, max_length=config.max_length,
                              tokenizer=config.tokenizer, tokens_field=config.tokens_field or None, **lengths),
        splits=incremental.split_counts(summary), records_read=summary["records_read"],
        csv_header_lines=csv_headers(entries, fmt) + ((previous.csv_header_lines or 0) if previous else 0),
        rejected=summary["rejected"], rejected_by_reason=summary["rejected_by_reason"], config=asdict(config),
        duplicates=incremental.duplicate_counts(found, config.duplicates))
    incremental.finish(run, draft, processed=processed, max_reject_fraction=config.max_reject_fraction,
                       allow_single_class=config.allow_single_class, strict=config.strict, copies=found,
                       duplicates_budget=config.duplicates_budget)
    return {**summary, "snapshot": run.snapshot_id, "run": run.reason, "processed": processed,
            "duplicates": asdict(draft.duplicates) if draft.duplicates else None}


def count_records(spark, parsed, carried, *, max_length: int, vocabulary: PreprocessSequencesConfig | None = None,
                  partitions: int | None = None) -> tuple[Outcomes, list[str]]:
    """The one aggregation of a run (``incremental.group_counts``): names, label kinds, outcomes, sizes and
    lengths of the new records (``parsed``) and of the rows ``carried`` from the previous snapshot; with
    ``vocabulary`` (its ``vocab_size`` and ``min_count``), in the same Spark job, the most frequent tokens of the
    accepted new records (``text.top_tokens``, counted in ``partitions`` tasks), else none. (Outcomes, those
    tokens by frequency)."""
    from pyspark.sql import functions as F

    from pipelines import incremental, session, text

    parts = [incremental.projection(parsed, name=F.col("label_name"), is_number=F.col("label_is_number"), carried=False,
                                 ids=F.least(F.col("n_tokens"), F.lit(max_length)), tokens=F.col("n_tokens"),
                                 max_length=max_length)]
    if carried is not None:
        parts.append(incremental.projection(carried, name=F.col("label_name"), carried=True,
                                         bytes_=F.length("tokens")))
    counts = incremental.group_counts(parts)
    if vocabulary is not None:  # a union: one job, whose rows with a token are the vocabulary's
        counts = counts.unionByName(text.top_tokens(text.token_counts(parsed, partitions), vocab_size=vocabulary.vocab_size,
                                                    min_count=vocabulary.min_count), allowMissingColumns=True)
    what = "labels, outcomes, sizes and lengths of the records" + (", token counts" if vocabulary else "")
    with session.spark_job(spark, "aggregate", what):
        rows = [r.asDict() for r in counts.collect()]
    top = sorted((r for r in rows if r.get("token") is not None), key=lambda r: (-r["count"], r["token"]))
    return (incremental.Outcomes([{k: v for k, v in r.items() if k not in ("token", "count")}
                                  for r in rows if r.get("token") is None]),
            [r["token"] for r in top])


def without_mixed_label_kinds(parsed, counted):
    """(``parsed`` with the records of the rarer label kind rejected when numbers and text labels mix, that kind
    or None)."""
    from pipelines import labels

    kinds = counted.label_kinds()
    rarer = labels.mixed_label_kind(kinds)
    if rarer is None:
        return parsed, None
    log.warning("labels mix numbers (%d records) and text (%d records): the %d with %s labels are rejected",
                kinds[True], kinds[False], kinds[rarer], "number" if rarer else "text")
    return labels.reject_label_kind(parsed, numbers=rarer, counts=kinds), rarer


def build_vocabulary(spark, records, config: PreprocessSequencesConfig, partitions: int | None = None) -> list[str]:
    """The most frequent tokens of the accepted records, in id order after the reserved ones, in a Spark job of
    their own (``count_records`` counts them in its job, unless a label kind is rejected after it)."""
    from pipelines import session, text

    with session.spark_job(spark, "vocabulary", "token counts of the accepted records"):
        top = [r["token"] for r in text.top_tokens(text.token_counts(records, partitions), vocab_size=config.vocab_size,
                                                   min_count=config.min_count).collect()]
    return text.make_vocabulary(top)


def parse_inputs(spark, entries: list, *, fmt: str, config: PreprocessSequencesConfig):
    """Parsed records (persisted, with their ``split``) of the listed files ``entries``: read and parsed in the
    same Python worker (``reading.read_records`` with ``text.parse_batch``)."""
    from pyspark.sql import functions as F

    from pipelines import duplicates, reading, session, splits, text

    fields = [f for f in (config.tokens_field or config.text_field, config.label_field) if f]
    params = text.ParseParams(fmt=fmt, text_field=config.text_field, label_field=config.label_field,
                              tokens_field=config.tokens_field or None, tokenizer=config.tokenizer,
                              lowercase=config.lowercase, max_length=config.max_length)
    try:
        parsed = reading.read_records(spark, entries, fmt=fmt, fields=fields, max_record_bytes=config.max_record_bytes,
                                      prepare=functools.partial(text.parse_batch, params=params),
                                      schema=text.PARSED_SCHEMA)
    except reading.MissingColumnError as exc:
        raise UsageError(str(exc)) from None
    # The split is drawn before the records are kept, so the normalised text (``split_key``) is not kept beside
    # the tokens: each accepted record's text is held once.
    # The fingerprint of a record is the hash of its normalised text (pipelines.duplicates); drawn from it, the
    # split is the one ``split_key: content`` has always drawn from that text.
    parsed = parsed.withColumn(FINGERPRINT, duplicates.content_fingerprint(F.col("split_key")))
    if config.split_key == "content":
        parsed = splits.assign_split_by_content(parsed, fractions=config.splits, fallback_col="source")
    else:
        parsed = splits.assign_split(parsed, fractions=config.splits, key_col="source")
    return session.persist(spark, parsed.drop("split_key"))


def csv_headers(entries: list, fmt: str) -> int:
    """The header lines of the CSV files read (one per readable file that is not empty)."""
    return sum(1 for e in entries if fmt == "csv" and e.size > 0 and e.problem is None)


def length_stats(current: dict, previous: Manifest | None) -> dict:
    """Longest, mean and truncated sequence lengths of this run's accepted records (``Outcomes.lengths``); an
    incremental run adds the previous snapshot's figures (they cover every record processed into the snapshot's
    lineage)."""
    stats = {"longest": current["longest"], "mean_length": current["mean_length"], "truncated": current["truncated"]}
    if not previous:
        return stats
    old = previous.sequence
    old_rows, rows = previous.rows, current["rows"]
    total = old_rows + rows
    return {"longest": max((v for v in (old.longest, current["longest"]) if v is not None), default=None),
            "mean_length": ((old.mean_length or 0) * old_rows + (current["mean_length"] or 0) * rows) / total
            if total else None,
            "truncated": old.truncated + current["truncated"]}

