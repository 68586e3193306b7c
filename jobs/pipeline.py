"""Run a pipeline of bigtrain stages the way a scheduler does (cron, Airflow), and show its run history.

Launch:
    bigtrain pipeline run conf/pipelines/nightly_images.yaml
    bigtrain pipeline run conf/pipelines/nightly_images.yaml --var raw=/data/incoming/images --force
    bigtrain pipeline history conf/pipelines/nightly_images.yaml --last 10

Stages run in order as subprocesses (`python -m jobs.cli SUBCOMMAND ...`); a stage whose inputs have not changed
since its last successful run is skipped. A second run while one holds the pipeline's lock exits at once (75) with
one line saying so. A bare program name (a stage's launcher: or command:) is looked up on PATH, then next to this
Python (the virtual environment's bin).

Exit codes: 0 every stage ran or was skipped; 1 a stage failed (later stages not run; the history names it and its
log); 2 the pipeline file, a stage's argument (checked before the first stage runs; no run is recorded) or a flag
is wrong; 3 a preprocessing stage rejected more input than max_reject_fraction
(nothing committed); 6 a preprocessing stage refused a snapshot that lost inputs or has one class; 7 a verify stage
found drift beyond its limits (nothing trained); 75 another run of this pipeline holds the lock (try again later);
130 Ctrl-C, 143 SIGTERM (the running stage is stopped too; the history records it).
"""
from __future__ import annotations

import argparse
import json
import sys

from core.errors import EXIT_OK, EXIT_USAGE, UsageError
from core.logs import setup_logging
from jobs.cli import SUBCOMMANDS, argument_problem
from jobs.common import ArgumentParser, run_main
from orchestration import runner, runs


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="bigtrain pipeline", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[-1], formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run",
                         help="run the stages in order, skipping those whose inputs are unchanged")
    run.add_argument("file", metavar="PIPELINE_YAML")
    run.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="override a var of the file")
    run.add_argument("--force", action="store_true", help="run every stage, changed inputs or not (a preprocessing stage still decodes only "
                                                        "new or changed files and commits nothing when there are "
                                                        "none: give it mode: full to rebuild the dataset)")
    run.add_argument("--quiet", action="store_true", help="warnings only")
    history = sub.add_parser("history",
                             help="the recorded runs of a pipeline, oldest first (by start time)")
    history.add_argument("file", metavar="PIPELINE_YAML")
    history.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    history.add_argument("--last", type=int, default=20, metavar="N", help="show the last N runs (default 20)")
    history.add_argument("--json", action="store_true", help="one JSON record per line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=getattr(args, "quiet", False))
    return run_main(lambda: execute(args))


def execute(args: argparse.Namespace) -> int:
    variables = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--var {item!r}: expected NAME=VALUE")
        variables[name] = value
    pipeline = runner.load(args.file, variables, subcommands=SUBCOMMANDS)  # PipelineError: a UsageError, exit 2
    if args.action == "run":
        runner.check_arguments(pipeline, argument_problem)  # before the lock and the history: nothing has started
        record = runs.run_recorded(pipeline, force=args.force)
        print(runs.locked_message(record) if record["status"] == "locked"
              else runs.format_history([record]).splitlines()[-1])
        return record["exit_code"]
    records = runs.read_history(pipeline)[-args.last:]
    if args.json:
        print("\n".join(json.dumps(r, sort_keys=True) for r in records))
    elif records:
        print(runs.format_history(records))
    else:
        print(f"pipeline {pipeline.name}: no runs recorded in {pipeline.state / 'history.jsonl'}")
    return EXIT_OK if args.action == "history" else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
