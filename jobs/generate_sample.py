"""Write the sample datasets the demo and the tests use.

Launch:
    bigtrain generate-images --output data/images --per-class 300
    bigtrain generate-texts --output data/texts --records 6000
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from core.config import load_section
from core.logs import setup_logging
from jobs.common import ArgumentParser, add_config_flags, positive_int, run_main
from pipelines.samples import generate_images, generate_texts


@dataclass(frozen=True)
class SampleImagesConfig:
    per_class: int
    bad_files: int
    seed: int


@dataclass(frozen=True)
class SampleTextsConfig:
    records: int
    files: int
    bad_lines: int
    seed: int


def images_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bigtrain generate-images",
        description="Write a 10-class image-folder dataset (shapes; PNG and JPEG; RGB, L, RGBA and P modes; "
                    "24-140 px) plus a few unusable files, for the demo and the tests.")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write <class>/<file> into")
    parser.add_argument("--per-class", type=positive_int("--per-class"), metavar="N", help="images per class")
    parser.add_argument("--bad-files", type=int, metavar="N", help="unusable files to mix in (0 for none)")
    parser.add_argument("--seed", type=int, metavar="N", help="the same seed writes the same files")
    add_config_flags(parser, "sample_images")
    return parser


def texts_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bigtrain generate-texts",
        description="Write positive/negative reviews as JSON Lines (or CSV) whose label depends on word order "
                    "('was not good' vs 'not ... was good'), plus a few unusable lines, for the demo and the tests.")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write part-NNNNN.jsonl files into")
    parser.add_argument("--records", type=positive_int("--records"), metavar="N", help="labelled reviews")
    parser.add_argument("--files", type=positive_int("--files"), metavar="N", help="files to spread them over")
    parser.add_argument("--bad-lines", type=int, metavar="N", help="unusable lines to mix in (0 for none)")
    parser.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="csv has no bad lines")
    parser.add_argument("--seed", type=int, metavar="N", help="the same seed writes the same files")
    add_config_flags(parser, "sample_texts")
    return parser


def main_images(argv: list[str] | None = None) -> int:
    args = images_parser().parse_args(argv)
    setup_logging()

    def run() -> int:
        config = load_section("sample_images", SampleImagesConfig, config_file=args.config, overrides=args.overrides,
                              flags={"per_class": args.per_class, "bad_files": args.bad_files, "seed": args.seed})
        bad = max(0, config.bad_files)
        counts = generate_images(args.output, per_class=config.per_class, seed=config.seed, bad_files=bad)
        print(f"generate-images: {sum(counts.values())} images in {len(counts)} classes + {bad} unusable files "
              f"-> {args.output}")
        return 0
    return run_main(run)


def main_texts(argv: list[str] | None = None) -> int:
    args = texts_parser().parse_args(argv)
    setup_logging()

    def run() -> int:
        config = load_section("sample_texts", SampleTextsConfig, config_file=args.config, overrides=args.overrides,
                              flags={"records": args.records, "files": args.files, "bad_lines": args.bad_lines,
                                     "seed": args.seed})
        bad = max(0, config.bad_lines) if args.format == "jsonl" else 0
        counts = generate_texts(args.output, records=config.records, files=config.files, bad_lines=bad,
                                seed=config.seed, fmt=args.format)
        print(f"generate-texts: {config.records} reviews ({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))}) "
              f"+ {bad} unusable lines in {config.files} {args.format} files -> {args.output}")
        return 0
    return run_main(run)


main = main_images

if __name__ == "__main__":
    sys.exit(main_images())
