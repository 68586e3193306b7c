"""The ``bigtrain`` command: one subcommand per job; ``bigtrain SUBCOMMAND --help`` explains each."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys

from jobs.common import closest_flag

SUBCOMMANDS = {
    "generate-images": ("jobs.generate_sample:main_images", "write the sample image-folder dataset"),
    "generate-texts": ("jobs.generate_sample:main_texts", "write the sample text dataset (JSON Lines)"),
    "preprocess-images": ("jobs.preprocess_images:main", "Spark: image folders -> Petastorm train/validation/test"),
    "preprocess-sequences": ("jobs.preprocess_sequences:main",
                             "Spark: JSON Lines/CSV/Parquet text or token ids -> Petastorm train/validation/test"),
    "train": ("jobs.train:main", "train and evaluate a model on a dataset (run under horovodrun for many processes)"),
    "verify": ("jobs.verify:main", "re-check a dataset snapshot's files, rows and schema against its manifest"),
    "datasets": ("jobs.datasets:main", "list, show, compare (diff) or gc the snapshots of a dataset"),
    "pipeline": ("jobs.pipeline:main", "run a pipeline of stages (conf/pipelines/NAME.yaml) under a lock; history"),
    "predict": ("jobs.predict:main", "Spark: score a dataset split or new raw inputs with a checkpoint -> Parquet"),
    "batches": ("jobs.batches:main", "the rows a training step trained (sample_id, source, label), rebuilt from a run"),
}

# Each job module's parser: build_parser(), but for the two generators that share a module.
PARSERS = {"generate-images": "images_parser", "generate-texts": "texts_parser"}

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


class _Refused(Exception):
    """argparse's error, raised instead of printing usage and exiting."""


def argument_problem(name: str, argv: list[str]) -> str | None:
    """Why ``bigtrain NAME ARGV`` would stop at its flags (argparse's message, plus the closest flag for an unknown
    one), or None. Only the subcommand's parser is built: nothing runs, nothing is printed, and no job imports
    pyspark or torch before its ``run``, as for ``--help``."""
    module_name = SUBCOMMANDS[name][0].split(":")[0]
    parser = getattr(importlib.import_module(module_name), PARSERS.get(name, "build_parser"))()
    _raise_errors(parser)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # a stage's --help: printed and exit 0, no problem
            parser.parse_args(argv)
    except _Refused as exc:
        return str(exc) + closest_flag(str(exc), parser)
    except SystemExit as exc:  # --help, --version
        return None if not exc.code else f"its parser exited with {exc.code}"
    return None


def _raise_errors(parser: argparse.ArgumentParser) -> None:
    """Every ``error`` of the parser and of its sub-parsers (``datasets gc``) raises ``_Refused`` (on Python 3.11,
    ``exit_on_error=False`` still exits on an unknown or missing flag)."""
    def error(message: str):
        raise _Refused(message)

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _raise_errors(sub)


if __name__ == "__main__":
    sys.exit(main())
