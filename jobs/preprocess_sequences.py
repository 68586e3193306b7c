"""Preprocess text or token sequences (JSON Lines, CSV or Parquet) into Petastorm datasets with Spark.

Launch:
    spark-submit --master 'local[*]' jobs/preprocess_sequences.py --input data/texts --output data/texts_ds
    bigtrain preprocess-sequences --input reviews.jsonl --output ds --text-field review --label-field stars
    bigtrain preprocess-sequences --input events.parquet --output ds --tokens-field event_ids --label-field churned

Every line (or Parquet row) is one record. It is decoded as strict UTF-8, parsed, normalised and tokenised on the
executors; the vocabulary (most frequent tokens; 0 = padding, 1 = unknown) and the label map are built with Spark
and saved beside the dataset (vocab.json, metadata.json). Records that cannot be used go to `rejected/` with their
source (`file:line`) and reason. Records read = rows written + records rejected, always.
"""
from __future__ import annotations

import argparse
import sys

from core.config import load_section
from core.errors import UsageError
from core.logs import setup_logging
from core.paths import to_url
from jobs.common import (ArgumentParser, add_config_flags, add_remote_flag, add_snapshot_flags, positive_int,
                         run_main, run_preprocessing, spark_target)
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bigtrain preprocess-sequences",
        description="Tokenise text (or take integer token sequences), build the vocabulary and label map, split, and "
                    "write Petastorm datasets with Spark.",
        epilog="Config keys (section preprocess_sequences in conf/bigtrain.yaml) can be set with --set "
               "preprocess_sequences.KEY=VALUE; flags win over config.")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a .jsonl/.csv/.parquet file or a folder of them (local, file://, hdfs://, s3a://)")
    parser.add_argument("--output", required=True, metavar="DIR_OR_URL",
                        help="the dataset folder; each run commits a new snapshot below it (snapshots/<id>/)")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv", "parquet"), help="default: from the extension")
    parser.add_argument("--text-field", metavar="NAME", help="field holding the text (default: text)")
    parser.add_argument("--label-field", metavar="NAME", help="field holding the label (default: label)")
    parser.add_argument("--tokens-field", metavar="NAME",
                        help="field holding integer token ids, used instead of tokenising --text-field")
    parser.add_argument("--tokenizer", choices=("word", "char"), help="word (default) or character level")
    parser.add_argument("--max-length", type=positive_int("--max-length"), metavar="N",
                        help="keep the first N tokens; the true length is stored")
    parser.add_argument("--vocab-size", type=positive_int("--vocab-size"), metavar="N",
                        help="vocabulary size including the 2 reserved ids (0 padding, 1 unknown)")
    parser.add_argument("--min-count", type=positive_int("--min-count"), metavar="N",
                        help="tokens seen fewer times map to unknown")
    parser.add_argument("--ranks", type=positive_int("--ranks"), metavar="N",
                        help="training processes expected: each split is written as a multiple of N row groups")
    parser.add_argument("--master", help="Spark master (default: spark-submit's, else config, local[*])")
    add_remote_flag(parser)
    add_snapshot_flags(parser, "preprocess_sequences")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    add_config_flags(parser, "preprocess_sequences")
    return parser


def load_config(args: argparse.Namespace) -> PreprocessSequencesConfig:
    flags = {"format": args.format, "text_field": args.text_field, "label_field": args.label_field,
             "tokens_field": args.tokens_field, "tokenizer": args.tokenizer, "max_length": args.max_length,
             "vocab_size": args.vocab_size, "min_count": args.min_count, "ranks": args.ranks, "mode": args.mode,
             "strict": True if args.strict else None,
             "max_reject_fraction": args.max_reject_fraction, "duplicates": args.duplicates}
    return load_section("preprocess_sequences", PreprocessSequencesConfig, config_file=args.config,
                        overrides=args.overrides, flags=flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    return run_main(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    from pipelines import reading

    config = load_config(args)
    input_url, output_url = to_url(args.input), to_url(args.output)
    try:
        fmt = reading.detect_format(input_url, config.format)
    except FileNotFoundError:
        raise UsageError(f"--input {args.input}: no such file or directory") from None
    except ValueError as exc:
        raise UsageError(f"--input {args.input}: {exc}") from None
    master, remote = spark_target(args, config.master)
    return run_preprocessing(
        job="preprocess-sequences", unit="records", master=master, remote=remote,
        spark_conf=config.spark_conf, input_url=input_url, output_url=output_url,
        body=lambda spark: preprocess_sequences(spark, input_url=input_url, output_url=output_url, fmt=fmt,
                                                config=config, allow_removals=args.allow_removals))


if __name__ == "__main__":
    sys.exit(main())
