"""Preprocess an image-folder dataset into Petastorm datasets (train/validation/test) with Spark.

Launch:
    spark-submit --master 'local[*]' jobs/preprocess_images.py --input data/images --output data/images_ds
    bigtrain preprocess-images --input data/images --output data/images_ds --image-size 32 --channels 3
On a cluster, ship the code with --py-files (docs/operations.md, "On a cluster") and use --master spark://HOST:7077, yarn or k8s://...

Input: one folder per class below --input (the folder name is the label). Output (see dataset.layout): one
Petastorm dataset per split, a `rejected/` Parquet table of every file that could not be used with the reason,
and `metadata.json` with the class map and the counts. Files read = rows written + files rejected, always.
"""
from __future__ import annotations

import argparse
import os
import sys

from core.config import load_section
from core.errors import UsageError
from core.logs import setup_logging
from core.paths import to_url
from jobs.common import (ArgumentParser, add_config_flags, add_remote_flag, add_snapshot_flags, positive_int,
                         run_main, run_preprocessing, spark_target)
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    add_remote_flag(parser)
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
             "strict": True if args.strict else None,
             "max_reject_fraction": args.max_reject_fraction, "duplicates": args.duplicates}
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
    master, remote = spark_target(args, config.master)
    return run_preprocessing(
        job="preprocess-images", unit="files", master=master, remote=remote,
        spark_conf=config.spark_conf, input_url=input_url, output_url=output_url,
        body=lambda spark: preprocess_images(spark, input_url=input_url, output_url=output_url, config=config,
                                             allow_removals=args.allow_removals))


if __name__ == "__main__":
    sys.exit(main())
