"""Re-check a committed dataset snapshot against its manifest: every file's size and sha256, the rows and schema of
every Parquet file, and each split's row count. Exit 0 when it matches, 1 when anything differs.

Launch:
    bigtrain verify data/images_ds                          # the current snapshot
    bigtrain verify data/images_ds/snapshots/000003-20261129T020000Z
    bigtrain verify s3://bucket/datasets/images --quick     # sizes, rows and schemas only (no full read)
    bigtrain verify data/images_ds --max-label-shift 0.1 --max-reject-fraction-change 0.02   # a drift gate

With a --max-* limit the snapshot is also compared with its parent snapshot (or --against): over a limit it exits 7
(drift; the lines say what shifted and by how much), so that a pipeline stops before training on it. A first
snapshot has no parent and passes.
"""
from __future__ import annotations

import argparse
import json
import sys

from core.errors import EXIT_FAILED, EXIT_OK, DriftError
from core.logs import setup_logging
from core.paths import join, to_url
from dataset import diff, snapshots
from jobs.common import ArgumentParser, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="bigtrain verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", metavar="DATASET", help="a dataset folder (its current snapshot) or a snapshot "
                                                           "folder; local path or URL (s3://, file://)")
    parser.add_argument("--quick", action="store_true", help="skip the sha256 checksums (no full read of the data)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    gate = parser.add_argument_group("drift gate: compare with the parent snapshot (exit 7 over a limit)")
    gate.add_argument("--max-label-shift", type=non_negative("--max-label-shift"), metavar="PSI",
                      help="the class shares' population stability index, all splits (0 the same; 0.1 small, "
                           "0.25 large)")
    gate.add_argument("--max-reject-fraction-change", type=non_negative("--max-reject-fraction-change"),
                      metavar="F", help="the rejected share of records read may move by at most F (0.02: two points)")
    gate.add_argument("--max-rows-change", type=non_negative("--max-rows-change"), metavar="F",
                      help="the rows may grow or shrink by at most this fraction of the parent's")
    gate.add_argument("--against", metavar="SNAPSHOT", help="compare with this snapshot (or dataset folder) instead "
                                                            "of the parent")
    return parser


def non_negative(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{flag} must be 0 or more, got {text}")
        return value
    return parse


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
    if problems:
        return EXIT_FAILED
    limits = {"label_shift": args.max_label_shift, "reject_fraction_change": args.max_reject_fraction_change,
              "rows_change": args.max_rows_change}
    if any(v is not None for v in limits.values()) or args.against:
        check_drift(url, contents, against=args.against, limits=limits)
    return EXIT_OK


def check_drift(url: str, contents, *, against: str | None, limits: dict[str, float | None]) -> None:
    """Print how the snapshot moved from its parent (or ``against``); a DriftError (exit 7) over a limit."""
    if against is None and not contents.snapshot.parent:
        print(f"verify: drift: snapshot {contents.snapshot_id} is the dataset's first: nothing to compare with")
        return
    before = to_url(against) if against else join(url.rsplit("/", 1)[0], contents.snapshot.parent)
    found = diff.compare(before, url)
    over = diff.over_limits(found, limits)
    print(f"verify: drift from {found['before']['id']}: " + "; ".join(diff.drift_lines(found)))
    if over:
        raise DriftError(f"snapshot {contents.snapshot_id} drifted from {found['before']['id']} beyond the limits: "
                         + "; ".join(over) + f" (bigtrain datasets diff {before} {url})")


if __name__ == "__main__":
    sys.exit(main())
