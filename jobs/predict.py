"""Batch inference with Spark: score a preprocessed dataset, or new raw inputs, with a trained checkpoint.

Launch:
    # a split of a bigtrain dataset (test by default; validation, train or all)
    spark-submit --master 'local[*]' jobs/predict.py --checkpoint runs/cnn --data data/images_ds --split test \
        --output runs/cnn/predictions
    # new raw inputs, through the same preprocessing the training data had (the checkpoint keeps its config)
    bigtrain predict --checkpoint runs/cnn/checkpoint.pt --input new_images/ --output runs/cnn/scored
    bigtrain predict --checkpoint runs/lstm --input new_reviews.jsonl --output runs/lstm/scored
    # texts whose fields are named otherwise; copy the ticket_id column through, to join the predictions back
    bigtrain predict --checkpoint runs/lstm --input tickets.csv --text-field body --label-field category \
        --keep-columns ticket_id --output runs/lstm/tickets
    # a model of your own: predict imports the code a checkpoint names only when you name it too
    bigtrain predict --checkpoint runs/mine --data data/texts_ds --output runs/mine/scored \
        --trust-import mypackage.models:build
On a cluster, ship the code with --py-files (docs/operations.md, "On a cluster"); the checkpoint is read on the driver and broadcast, so
executors need no access to it, and the model is built once per executor Python worker.

Output: Parquet at --output, one row per input: id, source, split, label (the true class where known),
predicted_index, predicted_class, top_probability, probabilities (in the order of `_predict.json`'s classes),
reason (why an input could not be scored; its prediction is then null), probability_by_class (class -> probability),
then the --keep-columns, as strings. label, predicted_class and the classes of probability_by_class are integers
when every class of the checkpoint is one, else strings. Inputs read = scored + unusable, always.
The predictions are written beside --output (``.NAME.predict-tmp``), checked, and only then swapped in for an
earlier prediction output, which a failed or refused run therefore leaves as it was. A checkpoint that is missing,
altered or not bigtrain's is refused (exit 2), naming the file; it is read once, and the bytes verified are the
bytes the executors load.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from core.config import load_section
from core.errors import UsageError
from core.logs import setup_logging
from core.paths import to_url
from dataset import layout
from dataset.info import load_dataset_info
from inference.batch import PredictConfig, check_dataset, check_output, load_checkpoint, output_lock, predict
from inference.columns import check_text_options, split_names
from jobs.common import (
    ArgumentParser,
    add_config_flags,
    add_remote_flag,
    check_apart,
    check_connectors,
    check_storage,
    positive_int,
    run_main,
    spark_target,
)

APART = "keep the predictions and the inputs apart, neither inside the other"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bigtrain predict",
        description="Score a preprocessed dataset split, or new raw images or texts, with a trained checkpoint, "
                    "on Spark executors; write the predictions and class probabilities as Parquet.",
        epilog="Config keys (section predict in conf/bigtrain.yaml) can be set with --set predict.KEY=VALUE; "
               "flags win over config.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint.pt, or the training output folder holding one")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DATASET", help="a bigtrain dataset (from preprocess-images/-sequences)")
    source.add_argument("--input", metavar="PATH",
                        help="raw inputs: a folder of image files, or .jsonl/.csv/.parquet text (file or folder)")
    parser.add_argument("--split", choices=(*reversed(layout.SPLITS), "all"),
                        help="with --data: the split to score (default test)")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv", "parquet"),
                        help="with --input text: the file format (default: from the extension)")
    parser.add_argument("--text-field", metavar="NAME",
                        help="with --input text: the field holding the text (default: the checkpoint's preprocessing "
                             "text_field)")
    parser.add_argument("--label-field", metavar="NAME",
                        help="with --input text: the field holding the true label, optional per record (default: "
                             "the checkpoint's preprocessing label_field)")
    parser.add_argument("--keep-columns", metavar="NAME[,NAME...]",
                        help="with --input text: input columns copied to the output, one string column each (a JSON "
                             "number or boolean as its JSON text, null where a record lacks it), to join the "
                             "predictions back to the inputs")
    parser.add_argument("--output", required=True, metavar="DIR_OR_URL", help="where the Parquet predictions go")
    parser.add_argument("--batch-size", type=positive_int("--batch-size"), metavar="N",
                        help="rows per forward pass in each Spark task")
    parser.add_argument("--master", help="Spark master (default: spark-submit's, else config predict.master)")
    add_remote_flag(parser)
    parser.add_argument("--trust-import", action="append", default=[], metavar="MODULE:NAME",
                        help="an import path the checkpoint names (its train.model factory or train.collate "
                             "function) that predict may import to rebuild the model; repeatable. A checkpoint is "
                             "data: predict imports no other code it names, only bigtrain's built-in models")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    add_config_flags(parser, "predict")
    return parser


def load_config(args: argparse.Namespace) -> PredictConfig:
    flags = {"split": args.split, "format": args.format, "batch_size": args.batch_size, "text_field": args.text_field,
             "label_field": args.label_field, "keep_columns": split_names(args.keep_columns)}
    return load_section("predict", PredictConfig, config_file=args.config, overrides=args.overrides, flags=flags)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    return run_main(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    from pipelines import session

    config = load_config(args)
    model = load_checkpoint(args.checkpoint, trusted=args.trust_import)
    check_text_options(config, kind=model.checkpoint.kind, dataset=bool(args.data))  # before Spark starts
    output_url = to_url(args.output)
    data = input_url = None
    if args.data:
        data = load_dataset_info(args.data)
        check_dataset(model.checkpoint, data, model.path)
        dataset_root = data.url.split("/snapshots/")[0].rstrip("/") + "/"  # the dataset, also when given a snapshot
        check_apart(dataset_root, output_url, input_flag="--data", advice=APART)
    else:
        input_url = to_url(args.input)
        if input_url.startswith("file://") and not Path(input_url[len("file://"):]).exists():
            raise UsageError(f"--input {args.input}: no such file or directory")
        check_apart(input_url, output_url, advice=APART)
        check_storage(input_url, flag="--input")
    with output_lock(output_url, args.output):
        check_output(output_url, args.output)
        master, remote = spark_target(args, config.master)
        spark = session.build_spark(app_name="bigtrain-predict", master=master, conf=config.spark_conf,
                                    remote=remote)
        try:
            check_connectors(spark, {"--output": output_url, **({"--input": input_url} if input_url else {})})
            start = time.monotonic()
            summary = predict(spark, model=model, output_url=output_url, data=data, input_url=input_url,
                              config=config)
            summary["seconds"] = round(time.monotonic() - start, 1)
        finally:
            spark.stop()
    print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"predict: read {summary['inputs_read']} = scored {summary['scored']} + unusable {summary['unusable']} "
             f"({summary.get('seconds', '-')}s)",
             f"  output: {summary['output']}"]
    if summary["predicted"]:
        lines.append("  predicted: " + ", ".join(f"{name}={n}" for name, n in summary["predicted"].items()))
    if summary["unusable"]:
        lines.append("  unusable:  " + ", ".join(f"{reason} ({n})" for reason, n in summary["unusable_by_reason"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

