"""Preprocess an image-folder dataset into Petastorm datasets (train/validation/test) with Spark.

Launch:
    spark-submit --master 'local[*]' jobs/preprocess_images.py --input data/images --output data/images_ds
    bigtrain preprocess-images --input data/images --output data/images_ds --image-size 32 --channels 3
On a cluster, ship the code with --py-files (see README) and use --master spark://HOST:7077, yarn or k8s://...

Input: one folder per class below --input (the folder name is the label). Output (see dataset.layout): one
Petastorm dataset per split, a `rejected/` Parquet table of every file that could not be used with the reason,
and `metadata.json` with the class map and the counts. Files read = rows written + files rejected, always.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from core.config import load_section, require
from core.errors import UsageError
from core.logs import setup_logging
from core.paths import to_url
from dataset.layout import validate_fractions
from dataset.manifest import ImageSpec, Manifest
from jobs.common import add_config_flags, add_snapshot_flags, positive_int, resolve_master, run_main, run_preprocessing

log = logging.getLogger("bigtrain.preprocess_images")
# `codec: auto` stores images up to this side as raw pixels (measured at 32 px: 1.3x the bytes of PNG on disk, the
# loader 3x faster, its workers freed of decoding; at 64 px 1.4x the bytes), larger ones as PNG (README "Codecs").
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
    follow_links: bool = False  # read what symbolic links below --input point to (inside it only); else rejects

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
        try:
            validate_fractions(self.splits, key=f"{prefix}.splits")
        except ValueError as exc:
            require(False, f"{prefix}.splits", str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigtrain preprocess-images",
        description="Decode, convert, resize and split an image-folder dataset into Petastorm datasets with Spark.",
        epilog="Config keys (section preprocess_images in conf/bigtrain.yaml) can be set with --set "
               "preprocess_images.KEY=VALUE; flags win over config.")
    parser.add_argument("--input", required=True, metavar="DIR_OR_URL",
                        help="root folder with one sub-folder per class (local path, file://, hdfs://, s3a://)")
    parser.add_argument("--output", required=True, metavar="DIR_OR_URL",
                        help="the dataset folder; each run commits a new snapshot below it (snapshots/<id>/)")
    parser.add_argument("--image-size", type=positive_int("--image-size"), metavar="N", help="resize to N x N")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 = grayscale, 3 = RGB")
    parser.add_argument("--codec", choices=("auto", "png", "jpeg", "raw"),
                        help="storage of the image column: raw uint8 pixels (fastest to load, largest), png "
                             "(lossless), jpeg (smallest, lossy); auto (default): raw up to 64 px, png above")
    parser.add_argument("--train-fraction", type=float, metavar="F", help="share of files in train (default 0.8)")
    parser.add_argument("--validation-fraction", type=float, metavar="F", help="share in validation (default 0.1)")
    parser.add_argument("--test-fraction", type=float, metavar="F",
                        help="share in test (default 0.1); the three must add up to 1")
    parser.add_argument("--row-group-size-mb", type=positive_int("--row-group-size-mb"), metavar="MB", help="Parquet row-group size")
    parser.add_argument("--ranks", type=positive_int("--ranks"), metavar="N",
                        help="training processes expected: each split is written as a multiple of N row groups")
    parser.add_argument("--master", help="Spark master (default: spark-submit's, else config preprocess_images.master, "
                                         "local[*])")
    add_snapshot_flags(parser, "preprocess_images")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    add_config_flags(parser, "preprocess_images")
    return parser


def load_config(args: argparse.Namespace) -> PreprocessImagesConfig:
    fractions = {"train": args.train_fraction, "validation": args.validation_fraction, "test": args.test_fraction}
    overrides = list(args.overrides)
    for name, value in fractions.items():
        if value is not None:
            overrides.append(f"preprocess_images.splits.{name}={value}")
    flags = {"image_size": args.image_size, "channels": args.channels, "codec": args.codec,
             "row_group_size_mb": args.row_group_size_mb, "ranks": args.ranks, "mode": args.mode,
             "max_reject_fraction": args.max_reject_fraction}
    return load_section("preprocess_images", PreprocessImagesConfig, config_file=args.config,
                        overrides=overrides, flags=flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    return run_main(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    input_url, output_url = to_url(args.input), to_url(args.output)
    if input_url.startswith("file://") and not os.path.isdir(input_url[len("file://"):]):
        raise UsageError(f"--input {args.input}: no such directory")
    return run_preprocessing(
        job="preprocess-images", unit="files", master=resolve_master(args.master, config.master),
        spark_conf=config.spark_conf, input_url=input_url, output_url=output_url,
        body=lambda spark: preprocess_images(spark, input_url=input_url, output_url=output_url, config=config,
                                             allow_removals=args.allow_removals))


def preprocess_images(spark, *, input_url: str, output_url: str, config: PreprocessImagesConfig,
                      allow_removals: bool = False) -> dict:
    """Extract (one listing, files read by the Python workers), transform (decode, label, split), load (Petastorm splits, rejected) into a new snapshot
    of ``output_url``, committed last; only new or changed files are decoded (``config.mode``). A run that removes
    more than ``config.max_removed_fraction`` of the input files, or a class folder's every file, is refused unless
    ``allow_removals`` (``incremental.check_removals``)."""
    from pyspark.sql import functions as F

    from pipelines import images, incremental, labels, splits, storage
    from pipelines.schemas import image_shape, image_unischema

    run = incremental.plan(dataset_url=output_url, input_url=input_url, kind="image", config=asdict(config),
                           mode=config.mode, follow_links=config.follow_links,
                           max_removed_fraction=config.max_removed_fraction, allow_removals=allow_removals,
                           class_of=lambda path: labels.clean_label(images.split_relpath(path, input_url)[1])[0])
    if run.nothing_to_do:
        return incremental.unchanged_summary(run)
    params = images.DecodeParams(image_size=config.image_size, channels=config.channels, codec=config.storage_codec,
                                 max_pixels=config.max_pixels, min_side=config.min_side,
                                 max_aspect_ratio=config.max_aspect_ratio, max_file_bytes=config.max_file_bytes)
    decoded = decode_files(spark, run.entries_to_read(), input_url=input_url, params=params)
    try:
        new = splits.assign_split(decoded, fractions=config.splits)
        previous = incremental.previous_records(spark, run, key=F.col("relpath"), name_col="class_name")
        parts = [incremental.projection(new, name=F.col("class_name"), carried=False, bytes_=F.length("image"))]
        if previous is not None:
            parts.append(incremental.projection(previous, name=F.col("class_name"), carried=True,
                                             bytes_=F.length("image")))
        with storage.spark_job(spark, "aggregate", "classes, outcomes and sizes of the records"):
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
        summary = storage.write_splits(
            spark, records, groups=groups, output_url=run.snapshot_url,
            schema=image_unischema(config.image_size, config.channels, config.storage_codec),
            label_names=list(class_to_index), row_group_size_mb=config.row_group_size_mb, ranks=config.ranks,
            rejected_columns=["path", "relpath", "class_name", "reason"])
    finally:
        decoded.unpersist()
    draft = Manifest(kind="image", input=input_url, classes=list(class_to_index), class_to_index=class_to_index,
                     image=ImageSpec(size=config.image_size, channels=config.channels, codec=config.storage_codec,
                                     shape=list(image_shape(config.image_size, config.channels))),
                     splits=incremental.split_counts(summary), records_read=summary["records_read"], rejected=summary["rejected"],
                     rejected_by_reason=summary["rejected_by_reason"], config=asdict(config))
    incremental.finish(run, draft, processed=processed, max_reject_fraction=config.max_reject_fraction,
                       allow_single_class=config.allow_single_class)
    return {**summary, "snapshot": run.snapshot_id, "run": run.reason, "processed": processed}


def decode_files(spark, entries: list, *, input_url: str, params):
    """Decoded rows (persisted) of the listed files ``entries``, read by the Python workers."""
    from pipelines import images, storage

    decoded = images.decode_images(storage.files_frame(spark, entries), root_url=input_url, params=params)
    return storage.persist(spark, decoded)


if __name__ == "__main__":
    sys.exit(main())
