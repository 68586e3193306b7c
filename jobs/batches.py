"""The rows of one training step, rebuilt from the dataset snapshot and the settings a run recorded, without
training (`training.batches`).

Launch:
    bigtrain batches --run runs/cnn --epoch 3 --step 41            # rank 0's batch of step 41 of epoch 3
    bigtrain batches --run runs/cnn --epoch 3 --step 41 --rank 1 --check   # and compare its digest with the log

Exit codes: 0 the rows are listed (with --check: and their digest is the one the run logged); 1 --check found
another digest, or the run logged none for that step; 2 a flag is wrong (a step past the epoch's end, a rank the
run did not have).
"""
from __future__ import annotations

import json
import sys

from core.errors import EXIT_FAILED, EXIT_OK, DatasetError
from core.logs import setup_logging
from jobs.common import ArgumentParser, positive_int, run_main


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="bigtrain batches", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n")[-1])
    parser.add_argument("--run", required=True, metavar="OUTPUT", help="a training output folder (train --output)")
    parser.add_argument("--epoch", required=True, type=positive_int("--epoch"), metavar="E",
                        help="the epoch, from 1 as in the logs")
    parser.add_argument("--step", required=True, type=positive_int("--step"), metavar="S",
                        help="the step within the epoch, from 1 as in the logs and in digests/rank<R>.tsv")
    parser.add_argument("--rank", type=positive_int("--rank", allow_zero=True), default=0, metavar="R",
                        help="the rank whose batch to list (default 0)")
    parser.add_argument("--world", type=positive_int("--world"), metavar="N",
                        help="the world size of that step (default: that of its stretch where the epoch was resumed "
                             "on another world size, else the one its digest line records, else 1)")
    parser.add_argument("--check", action="store_true",
                        help="compare the rebuilt batch's digest with the one the run logged (exit 1 if not equal)")
    parser.add_argument("--json", action="store_true", help="print the rows and digests as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    return run_main(lambda: run(args))


def run(args) -> int:
    from training.batches import step_rows  # torch

    found = step_rows(args.run, epoch=args.epoch, step=args.step, rank=args.rank, world=args.world)
    if args.json:
        print(json.dumps({"epoch": found.epoch, "step": found.step, "rank": found.rank, "world": found.world,
                          "steps": found.steps, "real": found.real, "stretches": found.stretches,
                          "dataset": found.dataset, "digest": found.digest, "logged": found.logged,
                          "rows": found.rows}, indent=2))
    else:
        padding = len(found.rows) - found.real
        print(f"epoch {found.epoch}, step {found.step} of {found.steps}, rank {found.rank} of {found.world}: "
              f"{len(found.rows)} rows of {found.dataset}"
              + (f" (the last {padding} repeat rows of the shard: padding)" if padding else "")
              + f"; digest {found.digest}"
              + (f" (logged {found.logged})" if found.logged else " (no digest logged for this step)"))
        for row in found.rows:
            print(f"  {row['sample_id']:>20}  {row['label']:<16} {row['source']}")
    if not args.check:
        return EXIT_OK
    if found.logged is None:
        raise DatasetError(f"--check: {args.run}/digests/rank{args.rank}.tsv logs no step {args.step} of epoch "
                           f"{args.epoch}")
    if found.logged != found.digest:
        print(f"batches: check FAILED: the rebuilt batch's digest {found.digest} is not the logged {found.logged}",
              file=sys.stderr)
        return EXIT_FAILED
    print("batches: check ok: the rebuilt batch is the one the run trained")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
