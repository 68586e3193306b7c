"""The snapshots of a dataset, with their counts and lineage.

Launch:
    bigtrain datasets list data/images_ds            # every snapshot, newest last; * marks the current one
    bigtrain datasets list data/images_ds/snapshots/000002-20261129T040743Z   # the same, this one marked <-
    bigtrain datasets show data/images_ds            # the current snapshot in detail (or a snapshot folder)
    bigtrain datasets show data/images_ds --json     # its whole manifest
    bigtrain datasets gc data/images_ds --keep 3 --pinned-by runs/cnn runs/lstm --dry-run   # what would go
    bigtrain datasets diff data/images_ds/snapshots/000001-... data/images_ds   # what changed since a snapshot
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import EXIT_OK, DatasetError, UsageError
from core.logs import setup_logging
from core.paths import join, to_url
from dataset import diff, layout, manifest, snapshots
from jobs.common import ArgumentParser, dataset_lock, positive_int, run_main

GC_DESCRIPTION = (
    "Remove the committed snapshots of a dataset older than the newest N. Never removed: the current snapshot, "
    "the newest N, and every snapshot a checkpoint named with --pinned-by was trained on (bigtrain keeps no "
    "register of the checkpoints made from a dataset: name every model you will resume, evaluate or compare on "
    "its data). Uncommitted staging folders are left to the next preprocessing run, damaged snapshots and "
    "folders not named like a snapshot id to you. A local dataset is locked while gc removes (gc exits 75 while a "
    "job writes it, and a job started meanwhile exits 75); object storage and HDFS have no lock, and training and "
    "predict take none: run gc when nothing reads an old snapshot that no --pinned-by names. Each snapshot is "
    "removed so that a crash leaves it whole or leaves nothing a reader takes for a snapshot; the next gc "
    "finishes an interrupted removal.")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="bigtrain datasets",
                                     description="The snapshots of a dataset.")
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="every snapshot of a dataset, oldest first")
    listing.add_argument("dataset", metavar="DATASET_OR_SNAPSHOT",
                         help="a dataset folder, or one of its snapshot folders (marked in the list)")
    show = sub.add_parser("show",
                          help="one snapshot: lineage, inputs, counts per split and class, files")
    show.add_argument("dataset", metavar="DATASET_OR_SNAPSHOT")
    show.add_argument("--json", action="store_true", help="print the whole manifest (metadata.json)")
    gc = sub.add_parser("gc",
                        help="remove committed snapshots older than the newest N, never the current one or "
                             "one a named checkpoint was trained on", description=GC_DESCRIPTION)
    gc.add_argument("dataset", metavar="DATASET", help="the dataset folder (holding snapshots/)")
    gc.add_argument("--keep", required=True, type=positive_int("--keep"), metavar="N",
                    help="committed snapshots to keep, newest first (the newest is the current one)")
    gc.add_argument("--pinned-by", nargs="+", action="extend", default=[], metavar="PATH",
                    help="checkpoint files (checkpoint.pt, checkpoints/step-*.pt) or training output folders "
                         "(their checkpoint and resume points): the snapshots they were trained on stay")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    diff = sub.add_parser("diff",
                          help="what changed from snapshot A to snapshot B: rows added, removed, changed "
                               "and moved per split and class, label shift, sizes, vocabulary, rejects",
                          description="Compare two committed snapshots, of one dataset or of two (a dataset folder "
                                      "stands for its current snapshot). A row is known by its sample_id and its "
                                      "content by a fingerprint of what is stored (the image's bytes, the record's "
                                      "tokens as words); changed: other content or another label. The label "
                                      "shift is the population stability index of the class shares (below 0.1 "
                                      "small, above 0.25 large). Reads the splits here, without Spark.")
    diff.add_argument("before", metavar="A", help="the earlier snapshot (or dataset folder)")
    diff.add_argument("after", metavar="B", help="the later snapshot (or dataset folder)")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON, with every added and "
                                                          "dropped vocabulary token")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    actions = {"list": lambda: list_snapshots(args.dataset), "show": lambda: show(args.dataset, args.json),
               "gc": lambda: gc(args.dataset, keep=args.keep, pinned_by=args.pinned_by, dry_run=args.dry_run),
               "diff": lambda: show_diff(args.before, args.after, args.json)}
    return run_main(actions[args.action])


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
    copies = contents.duplicates
    lines.append("  copies     not looked for (a snapshot written before fingerprints, or duplicates: ignore)"
                 if copies is None else
                 f"  copies   {copies.groups:>8} contents held by more than one record: {copies.duplicates} "
                 f"duplicates, {copies.conflicting} under conflicting labels, {copies.rejected} rejected "
                 f"(duplicates: {copies.mode}); "
                 + (f"{copies.near_groups} groups of near copies ({copies.near_rows} rows); "
                    if copies.near_groups is not None else "")
                 + f"{copies.cross_split} groups across splits")
    if contents.sequence:
        lines.append(f"  vocabulary {contents.sequence.vocab_size} tokens ({contents.sequence.token_dtype})")
    lines.append(f"  files      {len(contents.files)}, {sum(f.bytes for f in contents.files.values())} bytes "
                 "(sha256 of each in metadata.json)")
    print("\n".join(lines))
    return EXIT_OK


def show_diff(before: str, after: str, as_json: bool) -> int:
    result = diff.compare(to_url(before), to_url(after))
    print(json.dumps(result, indent=2, sort_keys=True) if as_json else diff.format_diff(result))
    return EXIT_OK


def gc(dataset: str, *, keep: int, pinned_by: list[str], dry_run: bool) -> int:
    """Remove the committed snapshots of ``dataset`` older than the newest ``keep``, but none a checkpoint of
    ``pinned_by`` was trained on; print each decision and the bytes freed."""
    url, given = dataset_and_snapshot(to_url(dataset))
    if given is not None:
        raise UsageError(f"{dataset} is a snapshot folder: give its dataset ({url})")
    pins = pinned_snapshots(pinned_by)
    if dry_run:
        return _collect(url, keep, pins, dry_run=True)
    with dataset_lock(url):
        return _collect(url, keep, pins, dry_run=False)


def _collect(url: str, keep: int, pins: dict[str, list[str]], *, dry_run: bool) -> int:
    scan = layout.scan_snapshots(url, parse_all=True)
    if not (scan.committed or scan.uncommitted or scan.damaged):
        raise DatasetError(f"{join(url, layout.SNAPSHOTS_DIR)} not found: {url} holds no snapshots")
    leftovers = snapshots.unfinished_removals(url)
    if leftovers and not dry_run:
        snapshots.finish_removals(url, leftovers)
    newest = scan.committed[-keep:]
    print(f"gc {url}: {len(scan.committed)} committed snapshots, keeping the newest {keep}"
          f"{' (dry run: nothing is removed)' if dry_run else ''}")
    for name in leftovers:
        print(f"  {'would finish' if dry_run else 'finished'} the removal of {name} (left by an interrupted gc)")
    freed, removed = 0, 0
    for sid in reversed(scan.committed):
        why = ("current" if sid == scan.committed[-1] else f"among the newest {keep}" if sid in newest
               else f"pinned by {', '.join(pins[sid])}" if sid in pins else None)
        if why is not None:
            print(f"  keep    {sid}  {why}")
            continue
        size = snapshots.size(url, sid) if dry_run else snapshots.remove(url, sid)
        print(f"  {'would remove' if dry_run else 'removed'} {sid}  {size} bytes")
        freed, removed = freed + size, removed + 1
    print(f"gc: {'would remove' if dry_run else 'removed'} {removed} snapshots, "
          f"{'would free' if dry_run else 'freed'} {freed} bytes")
    return EXIT_OK


def pinned_snapshots(paths: list[str]) -> dict[str, list[str]]:
    """snapshot id -> the checkpoints among ``paths`` (checkpoint files, training output folders) trained on it, as
    their sidecars record it (``training.checkpoint.save``: read without loading the checkpoint)."""
    pins: dict[str, list[str]] = {}
    for given in paths:
        for sidecar in _sidecars(given):
            for sid in _trained_on(sidecar):
                pins.setdefault(sid, []).append(str(sidecar.with_suffix(".pt")))
    return pins


def _sidecars(given: str) -> list[Path]:
    path = Path(given)
    if path.is_dir():
        found = [path / "checkpoint.json", *sorted((path / "checkpoints").glob("step-*.json"))]
    else:
        found = [path.with_suffix(".json")] if path.suffix in (".pt", ".json") else []
    found = [p for p in found if p.is_file()]
    if not found:
        raise UsageError(f"--pinned-by {given}: no bigtrain checkpoint there (a checkpoint.pt with its "
                         "checkpoint.json, a resume point, or a training output folder holding them)")
    return found


def _trained_on(sidecar: Path) -> list[str]:
    """The snapshot ids a checkpoint's sidecar records: its own and, while a replacement was interrupted, the
    previous file's."""
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        ids = [entry["snapshot_id"] for entry in [info] + ([info["previous"]] if info.get("previous") else [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"--pinned-by: {sidecar} does not say which dataset snapshot its checkpoint was trained on "
                         f"({type(exc).__name__}: {exc})") from None
    if not all(isinstance(sid, str) for sid in ids):
        raise UsageError(f"--pinned-by: {sidecar}: its checkpoint records no dataset snapshot (snapshot_id "
                         f"{ids[0]!r}); it pins nothing, leave it out")
    return ids


if __name__ == "__main__":
    sys.exit(main())
