"""Two committed snapshots compared (``bigtrain datasets diff``, ``bigtrain verify --max-label-shift``): rows added,
removed, changed and moved between splits, per split and class; the label distribution's shift; input sizes or
sequence lengths; the vocabulary; the reject reasons.

A row is known by its ``sample_id`` (a hash of where it came from: an image's path below the input, a record's
``file:line``) and its content by a fingerprint computed here: the SHA-256 of the stored image bytes, or of the
record's tokens as words (each snapshot's own vocabulary), so that a vocabulary rebuilt between two runs does not
make every record look changed. A row is *changed* when its content or its label differs. Reading is pyarrow over
fsspec on this machine (no Spark): a split is read one row group at a time, holding a few dozen bytes per row.

The label shift is the population stability index (PSI) of the class shares, ``sum((b - a) * ln(b / a))`` with each
share at least 1e-4: 0 for the same distribution; by the usual reading below 0.1 small, 0.1-0.25 moderate, above
0.25 large.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from core.errors import DatasetError
from core.paths import filesystem, join
from dataset import layout, manifest
from dataset.manifest import Manifest
from dataset.rows import LABEL, SAMPLE_ID, rows_of

PSI_FLOOR = 1e-4  # the smallest share a class counts with: a class absent on one side gives a large, finite PSI



@dataclass(frozen=True)
class Side:
    url: str
    manifest: Manifest
    rows: dict[str, dict[int, tuple[str, str]]]  # split -> sample_id -> (class name, content fingerprint)
    lengths: list[int]                            # sequences: every row's length; images: the input files' bytes
    vocabulary: list[str] | None


def open_side(url: str) -> Side:
    """A committed snapshot (or a dataset folder's current one) read for comparing."""
    snapshot = layout.resolve_snapshot(url)
    contents = manifest.read(snapshot)
    vocabulary = layout.read_vocabulary(snapshot) if contents.kind == "sequence" else None
    rows: dict[str, dict[int, tuple[str, str]]] = {}
    lengths: list[int] = []
    for split, counts in contents.splits.items():
        rows[split] = _split_rows(join(snapshot, split), contents, vocabulary, lengths) if counts.rows else {}
    if contents.kind == "image":
        lengths = _input_sizes(snapshot)
    return Side(url=snapshot, manifest=contents, rows=rows, lengths=lengths, vocabulary=vocabulary)


def _split_rows(split_url: str, contents: Manifest, vocabulary: list[str] | None,
                lengths: list[int]) -> dict[int, tuple[str, str]]:
    contract = rows_of(contents.kind)
    names = {index: name for name, index in contents.class_to_index.items()}
    content = contract.features[0]  # the stored image, or the token ids
    columns = [SAMPLE_ID, LABEL, content, *([contract.length] if contract.length else [])]
    fs, _ = filesystem(split_url)
    found: dict[int, tuple[str, str]] = {}
    for file, group, _ in layout.row_groups(split_url):  # one row group at a time
        with layout.open_parquet(fs, file) as parquet:
            table = parquet.read_row_group(group, columns=columns, use_threads=False)
        ids, labels, values = (table.column(c).to_pylist() for c in columns[:3])
        sizes = table.column(contract.length).to_pylist() if contract.length else [None] * len(ids)
        dtype = contents.sequence.token_dtype if contents.sequence else None
        for sample_id, label, value, size in zip(ids, labels, values, sizes):
            found[sample_id] = (names.get(label, str(label)), _fingerprint(value, size, vocabulary, dtype))
            if size is not None:
                lengths.append(int(size))
    return found


def _fingerprint(value: bytes, length: int | None, vocabulary: list[str] | None, dtype: str | None) -> str:
    digest = hashlib.sha256()
    if vocabulary is None or dtype is None:
        digest.update(value)
    else:  # token ids, stored as little-endian bytes of the manifest's dtype; the words are what the record said
        import numpy as np

        ids = np.frombuffer(value, np.dtype(dtype).newbyteorder("<"))[: length if length is not None else None]
        digest.update("\x1f".join(vocabulary[i] if 0 <= i < len(vocabulary) else f"#{i}" for i in ids.tolist())
                      .encode("utf-8"))
    return digest.hexdigest()[:32]


def _input_sizes(snapshot: str) -> list[int]:
    fs, path = filesystem(join(snapshot, layout.INPUTS_FILE))
    if not fs.exists(path):
        return []
    table = layout.read_parquet(fs, path, columns=["size"])
    return [int(size) for size in table.column("size").to_pylist()]


def psi(before: dict[str, int], after: dict[str, int]) -> float:
    """The population stability index of two count distributions over the same names (0: the same shares)."""
    names = sorted(set(before) | set(after))
    total_a, total_b = sum(before.values()), sum(after.values())
    if not names or not total_a or not total_b:
        return 0.0
    value = 0.0
    for name in names:
        a = max(before.get(name, 0) / total_a, PSI_FLOOR)
        b = max(after.get(name, 0) / total_b, PSI_FLOOR)
        value += (b - a) * math.log(b / a)
    return value


def _quantiles(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]
    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 2), "p10": at(0.1), "p50": at(0.5),
            "p90": at(0.9), "max": ordered[-1]}


def compare(a_url: str, b_url: str) -> dict[str, Any]:
    """What changed from snapshot ``a_url`` to ``b_url`` (dataset folders stand for their current snapshot), as
    plain data (``format_diff`` prints it; ``--json`` prints it as it is)."""
    a, b = open_side(a_url), open_side(b_url)
    if a.manifest.kind != b.manifest.kind:
        raise DatasetError(f"{a.url} holds {a.manifest.kind} rows and {b.url} {b.manifest.kind} rows: nothing to "
                           "compare")
    where_a = {sid: split for split, rows in a.rows.items() for sid in rows}
    where_b = {sid: split for split, rows in b.rows.items() for sid in rows}
    splits: dict[str, Any] = {}
    for split in sorted(set(a.rows) | set(b.rows), key=_split_order):
        rows_a, rows_b = a.rows.get(split, {}), b.rows.get(split, {})
        per_class: dict[str, dict[str, int]] = {}

        def count(name: str, what: str) -> None:
            per_class.setdefault(name, {"added": 0, "removed": 0, "changed": 0, "moved_in": 0, "moved_out": 0})
            per_class[name][what] += 1
        for sid, (name, print_) in rows_b.items():
            if sid not in rows_a:
                count(name, "moved_in" if sid in where_a else "added")
            elif rows_a[sid] != (name, print_):
                count(name, "changed")
        for sid, (name, _) in rows_a.items():
            if sid not in rows_b:
                count(name, "moved_out" if sid in where_b else "removed")
        totals = {what: sum(c[what] for c in per_class.values())
                  for what in ("added", "removed", "changed", "moved_in", "moved_out")}
        labels_a = _class_counts(rows_a)
        labels_b = _class_counts(rows_b)
        splits[split] = {"rows_before": len(rows_a), "rows_after": len(rows_b), **totals,
                         "label_shift_psi": round(psi(labels_a, labels_b), 4),
                         "per_class": dict(sorted(per_class.items()))}
    all_a = _class_counts({k: v for rows in a.rows.values() for k, v in rows.items()})
    all_b = _class_counts({k: v for rows in b.rows.values() for k, v in rows.items()})
    vocabulary = None
    if a.vocabulary is not None and b.vocabulary is not None:
        words_a, words_b = set(a.vocabulary), set(b.vocabulary)
        vocabulary = {"before": len(a.vocabulary), "after": len(b.vocabulary),
                      "added": sorted(words_b - words_a), "dropped": sorted(words_a - words_b)}
    reasons = sorted(set(a.manifest.rejected_by_reason) | set(b.manifest.rejected_by_reason))
    return {
        "before": {"snapshot": a.url, "id": a.manifest.snapshot_id, "rows": a.manifest.rows,
                   "records_read": a.manifest.records_read, "rejected": a.manifest.rejected},
        "after": {"snapshot": b.url, "id": b.manifest.snapshot_id, "rows": b.manifest.rows,
                  "records_read": b.manifest.records_read, "rejected": b.manifest.rejected},
        "kind": a.manifest.kind,
        "label_shift_psi": round(psi(all_a, all_b), 4),
        "classes": {"before": all_a, "after": all_b},
        "splits": splits,
        "reject_fraction": {"before": _fraction(a.manifest), "after": _fraction(b.manifest),
                            "change": round(_fraction(b.manifest) - _fraction(a.manifest), 6)},
        "rejected_by_reason": {r: {"before": a.manifest.rejected_by_reason.get(r, 0),
                                   "after": b.manifest.rejected_by_reason.get(r, 0)} for r in reasons},
        ("sequence_length" if a.manifest.kind == "sequence" else "input_file_bytes"):
            {"before": _quantiles(a.lengths), "after": _quantiles(b.lengths)},
        "vocabulary": vocabulary,
    }


def _class_counts(rows: dict[int, tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _ in rows.values():
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _fraction(contents: Manifest) -> float:
    return round(contents.rejected / contents.records_read, 6) if contents.records_read else 0.0


def _split_order(name: str) -> tuple[int, str]:
    order = ("train", "validation", "test")
    return (order.index(name) if name in order else len(order), name)


def format_diff(diff: dict[str, Any], *, examples: int = 10) -> str:
    """The diff as a person reads it."""
    before, after = diff["before"], diff["after"]
    lines = [f"diff {before['id']} -> {after['id']} ({diff['kind']} rows)",
             f"  rows {before['rows']} -> {after['rows']}; records read {before['records_read']} -> "
             f"{after['records_read']}; rejected {before['rejected']} -> {after['rejected']}",
             f"  label shift (PSI, all splits) {diff['label_shift_psi']:.4f}"]
    for split, d in diff["splits"].items():
        lines.append(f"  {split:<10} {d['rows_before']:>7} -> {d['rows_after']:<7} added {d['added']}, removed "
                     f"{d['removed']}, changed {d['changed']}, moved in {d['moved_in']}, moved out "
                     f"{d['moved_out']}; label shift {d['label_shift_psi']:.4f}")
        for name, c in d["per_class"].items():
            what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.items() if v)
            lines.append(f"    {name}: {what}")
    fraction = diff["reject_fraction"]
    lines.append(f"  reject fraction {fraction['before']:.4f} -> {fraction['after']:.4f}")
    for reason, n in diff["rejected_by_reason"].items():
        if n["before"] != n["after"]:
            lines.append(f"    {reason}: {n['before']} -> {n['after']}")
    for key, label in (("sequence_length", "sequence length"), ("input_file_bytes", "input file bytes")):
        if key in diff:
            q = diff[key]
            lines.append(f"  {label}: " + " -> ".join(
                "-" if side is None else f"p10 {side['p10']} p50 {side['p50']} p90 {side['p90']} (mean {side['mean']})"
                for side in (q["before"], q["after"])))
    vocabulary = diff.get("vocabulary")
    if vocabulary:
        lines.append(f"  vocabulary {vocabulary['before']} -> {vocabulary['after']} tokens: "
                     f"{len(vocabulary['added'])} added{_some(vocabulary['added'], examples)}, "
                     f"{len(vocabulary['dropped'])} dropped{_some(vocabulary['dropped'], examples)}")
    return "\n".join(lines)


def _some(words: list[str], n: int) -> str:
    if not words:
        return ""
    return " (" + ", ".join(words[:n]) + (", ..." if len(words) > n else "") + ")"


def _rows_change(diff: dict[str, Any]) -> float:
    before, after = diff["before"]["rows"], diff["after"]["rows"]
    return abs(after - before) / before if before else (0.0 if not after else float("inf"))


def drift_lines(diff: dict[str, Any]) -> list[str]:
    """The measures the drift gate looks at, one phrase each."""
    fraction = diff["reject_fraction"]
    return [f"label shift (PSI) {diff['label_shift_psi']:.4f}",
            f"reject fraction {fraction['before']:.4f} -> {fraction['after']:.4f} ({fraction['change']:+.4f})",
            f"rows {diff['before']['rows']} -> {diff['after']['rows']} ({_rows_change(diff):.1%} change)"]


def over_limits(diff: dict[str, Any], limits: dict[str, float | None]) -> list[str]:
    """What exceeds ``limits`` (label_shift, reject_fraction_change, rows_change; None: no limit), each saying by
    how much; the classes whose share moved most name the label shift."""
    over = []
    if limits.get("label_shift") is not None and diff["label_shift_psi"] > limits["label_shift"]:
        before, after = diff["classes"]["before"], diff["classes"]["after"]
        tb, ta = sum(before.values()) or 1, sum(after.values()) or 1
        moved = sorted(set(before) | set(after), key=lambda c: (-abs(after.get(c, 0) / ta - before.get(c, 0) / tb), c))
        shares = ", ".join(f"{c} {before.get(c, 0) / tb:.1%} -> {after.get(c, 0) / ta:.1%}" for c in moved[:3])
        over.append(f"label shift (PSI) {diff['label_shift_psi']:.4f} > {limits['label_shift']} ({shares})")
    change = diff["reject_fraction"]["change"]
    if limits.get("reject_fraction_change") is not None and abs(change) > limits["reject_fraction_change"]:
        fraction = diff["reject_fraction"]
        over.append(f"reject fraction {fraction['before']:.4f} -> {fraction['after']:.4f} ({change:+.4f}, limit "
                    f"{limits['reject_fraction_change']})")
    if limits.get("rows_change") is not None and _rows_change(diff) > limits["rows_change"]:
        over.append(f"rows {diff['before']['rows']} -> {diff['after']['rows']} ({_rows_change(diff):.1%} change, "
                    f"limit {limits['rows_change']:.1%})")
    return over
