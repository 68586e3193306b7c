"""The ``bigtrain`` command: one subcommand per job; ``bigtrain SUBCOMMAND --help`` explains each."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "generate-images": ("jobs.generate_sample:main_images", "write the sample image-folder dataset"),
    "generate-texts": ("jobs.generate_sample:main_texts", "write the sample text dataset (JSON Lines)"),
    "preprocess-images": ("jobs.preprocess_images:main", "Spark: image folders -> Petastorm train/validation/test"),
    "preprocess-sequences": ("jobs.preprocess_sequences:main",
                             "Spark: JSON Lines/CSV/Parquet text or token ids -> Petastorm train/validation/test"),
    "train": ("jobs.train:main", "train and evaluate a model on a dataset (run under horovodrun for many processes)"),
    "verify": ("jobs.verify:main", "re-check a dataset snapshot's files, rows and schema against its manifest"),
    "datasets": ("jobs.datasets:main", "list the snapshots of a dataset, or show one with its counts and lineage"),
    "pipeline": ("jobs.pipeline:main", "run a pipeline of stages (conf/pipelines/NAME.yaml) under a lock; history"),
    "predict": ("jobs.predict:main", "Spark: score a dataset split or new raw inputs with a checkpoint -> Parquet"),
}

USAGE = "usage: bigtrain SUBCOMMAND [--help] [ARGS...]\n\nsubcommands:\n" + "\n".join(
    f"  {name:<20} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module_name, function = SUBCOMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module_name), function)(rest)


if __name__ == "__main__":
    sys.exit(main())
