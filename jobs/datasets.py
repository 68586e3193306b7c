"""The snapshots of a dataset, with their counts and lineage.

Launch:
    bigtrain datasets list data/images_ds            # every snapshot, newest last; * marks the current one
    bigtrain datasets list data/images_ds/snapshots/000002-20261129T040743Z   # the same, this one marked <-
    bigtrain datasets show data/images_ds            # the current snapshot in detail (or a snapshot folder)
    bigtrain datasets show data/images_ds --json     # its whole manifest
"""
from __future__ import annotations

import argparse
import json
import sys

from core.errors import EXIT_OK, DatasetError
from core.logs import setup_logging
from core.paths import join, to_url
from dataset import layout, manifest
from jobs.common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigtrain datasets", description="The snapshots of a dataset.")
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="every snapshot of a dataset, oldest first")
    listing.add_argument("dataset", metavar="DATASET_OR_SNAPSHOT",
                         help="a dataset folder, or one of its snapshot folders (marked in the list)")
    show = sub.add_parser("show", help="one snapshot: lineage, inputs, counts per split and class, files")
    show.add_argument("dataset", metavar="DATASET_OR_SNAPSHOT")
    show.add_argument("--json", action="store_true", help="print the whole manifest (metadata.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    return run_main(lambda: list_snapshots(args.dataset) if args.action == "list" else show(args.dataset, args.json))


def dataset_and_snapshot(url: str) -> tuple[str, str | None]:
    """(dataset URL, snapshot id) of a snapshot folder (``<dataset>/snapshots/<id>``); (url, None) of anything else."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if parent.rpartition("/")[2] == layout.SNAPSHOTS_DIR and not any(layout.snapshot_ids(url)):
        return parent.rpartition("/")[0], name
    return url, None


def list_snapshots(dataset: str) -> int:
    url, given = dataset_and_snapshot(to_url(dataset))
    scan = layout.scan_snapshots(url, parse_all=True)
    committed, uncommitted = scan.committed, sorted(scan.uncommitted + scan.damaged)
    if given is not None and given not in committed + uncommitted:
        raise DatasetError(f"{dataset}: no snapshot {given} in {url}")
    if not committed and not uncommitted:
        raise DatasetError(f"{join(url, layout.SNAPSHOTS_DIR)} not found: {url} holds no snapshots")
    print(f"{'':1} {'snapshot':<24} {'committed':<21} {'run':<12} {'train':>8} {'valid':>7} {'test':>7} "
          f"{'rejected':>8} {'inputs':>7}  parent")
    for sid in sorted(committed + uncommitted):
        marker = "  <- given" if sid == given else ""
        if sid in uncommitted:
            state = "(damaged manifest)" if sid in scan.damaged else "(uncommitted)"
            print(f"  {sid:<24} {state:<21}{marker}")
            continue
        contents = manifest.read(join(url, layout.SNAPSHOTS_DIR, sid))
        snap, rows = contents.snapshot, {k: v.rows for k, v in contents.splits.items()}
        mark = "*" if sid == committed[-1] else " "
        print(f"{mark} {sid:<24} {snap.committed:<21} {snap.run:<12} {rows.get('train', 0):>8} "
              f"{rows.get('validation', 0):>7} {rows.get('test', 0):>7} {contents.rejected:>8} "
              f"{snap.inputs.files:>7}  {snap.parent or '-'}{marker}")
    return EXIT_OK


def show(dataset: str, as_json: bool) -> int:
    url = layout.resolve_snapshot(to_url(dataset))
    contents = manifest.read(url)
    if as_json:
        print(json.dumps(contents.to_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    snap, inputs = contents.snapshot, contents.snapshot.inputs
    lines = [f"snapshot {snap.id}  ({url})",
             f"  kind {contents.kind}, {len(contents.classes)} classes, committed {snap.committed} by bigtrain "
             f"{snap.bigtrain_version}, parent {snap.parent or '-'}",
             f"  run: {snap.run} ({snap.reason}); this run read {snap.records_processed} records, "
             f"rejected {snap.rejected_processed}",
             f"  inputs: {inputs.files} files, {inputs.bytes} bytes below {contents.input} "
             f"({inputs.processed} processed in this run; list in {inputs.file})",
             f"  config fingerprint {snap.config_fingerprint}; schema "
             + ", ".join(f"{k} {v}" for k, v in contents.schema_fingerprints.items())]
    for split, counts in contents.splits.items():
        per_class = ", ".join(f"{name}={n}" for name, n in counts.per_class.items())
        lines.append(f"  {split:<10} {counts.rows:>8} rows in {counts.row_groups} row groups  [{per_class}]")
    reasons = ", ".join(f"{r} ({n})" for r, n in contents.rejected_by_reason.items())
    lines.append(f"  rejected   {contents.rejected:>8} records{': ' + reasons if reasons else ''}")
    if contents.sequence:
        lines.append(f"  vocabulary {contents.sequence.vocab_size} tokens ({contents.sequence.token_dtype})")
    lines.append(f"  files      {len(contents.files)}, {sum(f.bytes for f in contents.files.values())} bytes "
                 "(sha256 of each in metadata.json)")
    print("\n".join(lines))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
