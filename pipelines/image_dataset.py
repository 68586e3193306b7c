"""The image-folder recipe: an image-folder input -> a new snapshot of Petastorm splits (train/validation/test),
a ``rejected/`` table and the manifest, with Spark.

Extract (one listing on the driver, files read by the Python workers), transform (decode, label, split), load
(Petastorm splits, rejected) into a new snapshot, committed last. ``jobs/preprocess_images.py`` parses the command
line and calls ``preprocess_images`` inside the shared preprocessing life cycle (``jobs.common.run_preprocessing``).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

from core.config import require
from dataset.layout import validate_fractions
from dataset.manifest import ImageSpec, Manifest
from dataset.rows import IMAGE

log = logging.getLogger("bigtrain.preprocess_images")
# `codec: auto` stores images up to this side as raw pixels (measured at 32 px: 1.3x the bytes of PNG on disk, the
# loader 3x faster, its workers freed of decoding; at 64 px 1.4x the bytes), larger ones as PNG (docs/guide.md, "Codecs").
RAW_MAX_SIDE = 64


def storage_codec(codec: str, image_size: int) -> str:
    """The codec images are stored with: ``auto`` resolved by size, any other as given."""
    if codec != "auto":
        return codec
    return "raw" if image_size <= RAW_MAX_SIDE else "png"


MAX_BINARY_FILE_BYTES = 2**31 - 1  # a file is read whole into a worker's memory, one Python bytes value


@dataclass(frozen=True)
class PreprocessImagesConfig:
    master: str
    image_size: int
    channels: Literal[1, 3]
    codec: Literal["auto", "png", "jpeg", "raw"]
    splits: dict[str, float]
    row_group_size_mb: int
    ranks: int
    max_pixels: int
    min_side: int
    max_aspect_ratio: float
    max_file_bytes: int
    spark_conf: dict[str, str] = field(default_factory=dict)
    mode: Literal["incremental", "overwrite", "error"] = "incremental"
    max_reject_fraction: float = 0.1
    max_removed_fraction: float = 0.5  # an incremental run losing more of the previous input files is refused
    allow_single_class: bool = False  # commit a snapshot whose rows are all of one class
    strict: bool = False  # refuse (exit 6) a snapshot with a class the train split has no row of
    follow_links: bool = False  # read what symbolic links below --input point to (inside it only); else rejects
    duplicates: Literal["reject", "keep", "ignore"] = "reject"  # copies of one content (pipelines.duplicates)
    near_duplicates: bool = True  # also group resized and re-encoded copies (one split each; never rejected)
    duplicates_budget: float = 0.1  # a run whose records duplicate others' content beyond this fraction is refused

    @property
    def storage_codec(self) -> str:
        """The codec the image column is written with (``auto``: raw pixels for small images, else PNG)."""
        return storage_codec(self.codec, self.image_size)

    def validate(self, prefix: str) -> None:
        require(4 <= self.image_size <= 4096, f"{prefix}.image_size", f"must be in [4, 4096], got {self.image_size}")
        require(self.row_group_size_mb > 0, f"{prefix}.row_group_size_mb", "must be positive")
        require(self.ranks >= 1, f"{prefix}.ranks", f"must be at least 1, got {self.ranks}")
        require(self.min_side >= 1, f"{prefix}.min_side", "must be at least 1")
        require(self.max_aspect_ratio >= 1, f"{prefix}.max_aspect_ratio", "must be at least 1")
        require(1 <= self.max_file_bytes <= MAX_BINARY_FILE_BYTES, f"{prefix}.max_file_bytes",
                f"must be in [1, {MAX_BINARY_FILE_BYTES}] (a file is read whole into memory), "
                f"got {self.max_file_bytes}")
        require(0 <= self.max_reject_fraction <= 1, f"{prefix}.max_reject_fraction",
                f"must be in [0, 1], got {self.max_reject_fraction}")
        require(0 <= self.max_removed_fraction <= 1, f"{prefix}.max_removed_fraction",
                f"must be in [0, 1], got {self.max_removed_fraction}")
        require(0 <= self.duplicates_budget <= 1, f"{prefix}.duplicates_budget",
                f"must be in [0, 1], got {self.duplicates_budget}")
        try:
            validate_fractions(self.splits, key=f"{prefix}.splits")
        except ValueError as exc:
            require(False, f"{prefix}.splits", str(exc))



def preprocess_images(spark, *, input_url: str, output_url: str, config: PreprocessImagesConfig,
                      allow_removals: bool = False) -> dict:
    """Extract (one listing, files read by the Python workers), transform (decode, label, split), load (Petastorm splits, rejected) into a new snapshot
    of ``output_url``, committed last; only new or changed files are decoded (``config.mode``). A run that removes
    more than ``config.max_removed_fraction`` of the input files, or a class folder's every file, is refused unless
    ``allow_removals`` (``incremental.check_removals``)."""
    from pyspark.sql import functions as F

    from pipelines import duplicates, images, incremental, labels, session, splits, writing
    from pipelines.schemas import image_shape, image_unischema

    run = incremental.plan(dataset_url=output_url, input_url=input_url, kind="image", config=asdict(config),
                           mode=config.mode, follow_links=config.follow_links,
                           max_removed_fraction=config.max_removed_fraction, allow_removals=allow_removals,
                           class_of=lambda path: labels.clean_label(images.split_relpath(path, input_url)[1])[0])
    if run.nothing_to_do:
        return incremental.unchanged_summary(run)
    params = images.DecodeParams(image_size=config.image_size, channels=config.channels, codec=config.storage_codec,
                                 max_pixels=config.max_pixels, min_side=config.min_side,
                                 max_aspect_ratio=config.max_aspect_ratio, max_file_bytes=config.max_file_bytes,
                                 thumbnails=config.near_duplicates and config.duplicates != "ignore")
    entries = run.entries_to_read()
    decoded = decode_files(spark, entries, input_url=input_url, params=params)
    try:
        new = splits.assign_split_by_content(decoded, fractions=config.splits, fallback_col="relpath")
        previous = duplicates.carried_fingerprints(
            incremental.previous_records(spark, run, key=F.col("relpath"), name_col="class_name"),
            F.when(F.col("reason").isNull(), images.stored_fingerprints(params)(F.col("image"))))
        found = incremental.find_duplicates(spark, new, previous, source=F.col("relpath"),
                                            name=F.col("class_name"), mode=config.duplicates,
                                            fractions=config.splits, near=config.near_duplicates,
                                            records=len(entries) + incremental.carried_records(run))
        new, previous = (duplicates.apply(df, found, spark=spark, source=F.col("relpath")) if df is not None
                         else None for df in (new, previous))
        parts = [incremental.projection(new, name=F.col("class_name"), carried=False, bytes_=F.length("image"))]
        if previous is not None:
            parts.append(incremental.projection(previous, name=F.col("class_name"), carried=True,
                                             bytes_=F.length("image")))
        with session.spark_job(spark, "aggregate", "classes, outcomes and sizes of the records"):
            counted = incremental.Outcomes([r.asDict() for r in incremental.group_counts(parts).collect()])
        class_to_index = labels.class_map(counted.names(accepted_only=False)
                                          + (list(run.previous.class_to_index) if not run.full else []))
        log.info("%d classes: %s", len(class_to_index), ", ".join(class_to_index))
        groups = counted.resolve(class_to_index)
        processed = incremental.processed(groups)
        records = splits.with_sample_id(labels.assign_labels(new, class_to_index=class_to_index))
        if previous is not None:
            records = records.unionByName(labels.assign_labels(previous, class_to_index=class_to_index),
                                          allowMissingColumns=True)
        summary = writing.write_splits(
            spark, records, groups=groups, output_url=run.snapshot_url,
            schema=image_unischema(config.image_size, config.channels, config.storage_codec),
            label_names=list(class_to_index), row_group_size_mb=config.row_group_size_mb, ranks=config.ranks,
            rejected_columns=list(IMAGE.rejected))
    finally:
        decoded.unpersist()
    draft = Manifest(kind="image", input=input_url, classes=list(class_to_index), class_to_index=class_to_index,
                     image=ImageSpec(size=config.image_size, channels=config.channels, codec=config.storage_codec,
                                     shape=list(image_shape(config.image_size, config.channels))),
                     splits=incremental.split_counts(summary), records_read=summary["records_read"], rejected=summary["rejected"],
                     rejected_by_reason=summary["rejected_by_reason"], config=asdict(config),
                     duplicates=incremental.duplicate_counts(found, config.duplicates))
    incremental.finish(run, draft, processed=processed, max_reject_fraction=config.max_reject_fraction,
                       allow_single_class=config.allow_single_class, strict=config.strict, copies=found,
                       duplicates_budget=config.duplicates_budget)
    return {**summary, "snapshot": run.snapshot_id, "run": run.reason, "processed": processed,
            "duplicates": asdict(draft.duplicates) if draft.duplicates else None}


def decode_files(spark, entries: list, *, input_url: str, params):
    """Decoded rows (persisted) of the listed files ``entries``, read by the Python workers."""
    from pipelines import images, reading, session

    decoded = images.decode_images(reading.files_frame(spark, entries), root_url=input_url, params=params)
    return session.persist(spark, decoded)


