"""Re-check a committed dataset snapshot against its manifest: every file's size and sha256, the rows and schema of
every Parquet file, and each split's row count. Exit 0 when it matches, 1 when anything differs.

Launch:
    bigtrain verify data/images_ds                          # the current snapshot
    bigtrain verify data/images_ds/snapshots/000003-20261129T020000Z
    bigtrain verify s3://bucket/datasets/images --quick     # sizes, rows and schemas only (no full read)
"""
from __future__ import annotations

import argparse
import json
import sys

from core.errors import EXIT_FAILED, EXIT_OK
from core.logs import setup_logging
from core.paths import to_url
from dataset import snapshots
from jobs.common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigtrain verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", metavar="DATASET", help="a dataset folder (its current snapshot) or a snapshot "
                                                           "folder; local path or URL (s3://, file://)")
    parser.add_argument("--quick", action="store_true", help="skip the sha256 checksums (no full read of the data)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    return run_main(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    url, contents, problems = snapshots.verify(to_url(args.dataset), checksums=not args.quick)
    files = contents.files if contents else {}
    if args.json:
        print(json.dumps({"snapshot": url, "ok": not problems, "problems": [str(p) for p in problems],
                          "files": len(files), "checksums": not args.quick}, indent=2))
    elif problems:
        print(f"verify {url}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
    else:
        print(f"verify {url}: OK, snapshot {contents.snapshot_id}: {len(files)} files, {contents.rows} rows, "
              f"{'sizes, sha256' if not args.quick else 'sizes'}, rows and schemas match the manifest")
    return EXIT_FAILED if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
