"""Write the sample image-folder dataset the demo and the tests use.

Launch:
    bigtrain generate-images --output data/images --per-class 300
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from jobs.common import add_config_flags, positive_int, run_main, setup_logging
from jobs.config import load_section


@dataclass(frozen=True)
class SampleImagesConfig:
    per_class: int
    bad_files: int
    seed: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigtrain generate-images",
        description="Write a 10-class image-folder dataset (shapes; PNG and JPEG; RGB, L, RGBA and P modes; "
                    "24-140 px) plus a few unusable files, for the demo and the tests.")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write <class>/<file> into")
    parser.add_argument("--per-class", type=positive_int("--per-class"), metavar="N", help="images per class")
    parser.add_argument("--bad-files", type=int, metavar="N", help="unusable files to mix in (0 for none)")
    parser.add_argument("--seed", type=int, metavar="N")
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    return run_main(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    from pipelines.samples import generate_images

    config = load_section("sample_images", SampleImagesConfig, config_file=args.config, overrides=args.overrides,
                          flags={"per_class": args.per_class, "bad_files": args.bad_files, "seed": args.seed})
    counts = generate_images(args.output, per_class=config.per_class, seed=config.seed, bad_files=max(0, config.bad_files))
    print(f"generate-images: {sum(counts.values())} images in {len(counts)} classes "
          f"+ {max(0, config.bad_files)} unusable files -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
