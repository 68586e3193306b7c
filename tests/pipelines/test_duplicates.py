"""Copies of one content (pipelines.duplicates): what ``decide`` marks, without Spark; then planted copies in
image folders and text files found by the real jobs, the counts in the manifest, every copy group in one split
(read back from the written Parquet, not from the code under test), incremental runs and the budget."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.config import load_section
from core.errors import EXIT_REJECTS, RejectBudgetError
from core.paths import to_url
from dataset import manifest
from dataset.layout import REJECTED_DIR, SPLITS
from jobs import datasets as datasets_job
from pipelines.duplicates import Member, decide
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.samples import generate_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from tests.conftest import snapshot_path


def m(source, name, split="train", carried=False):
    return Member(source, name, split, carried)


def test_the_first_copy_stays_later_copies_of_one_class_are_rejected_and_conflicts_reject_every_copy():
    found = decide([[m("a/1.png", "a"), m("a/2.png", "a", "test"), m("a/3.png", "a")],
                    [m("a/9.png", "a"), m("b/9.png", "b")]], mode="reject")
    assert found.marks == {
        "a/2.png": (None, "duplicate: same content as a/1.png"),
        "a/3.png": (None, "duplicate: same content as a/1.png"),
        "a/9.png": (None, "conflicting labels: the same content is labelled a, b (also b/9.png)"),
        "b/9.png": (None, "conflicting labels: the same content is labelled a, b (also a/9.png)")}
    assert found.counts() == {"groups": 2, "duplicates": 2, "conflicting": 2, "rejected": 4, "cross_split": 0}
    assert (found.new_found, found.new_rejected) == (4, 4)


def test_keep_rejects_nothing_counts_the_same_and_moves_a_new_copy_to_its_carried_rows_split():
    groups = [[m("a/1.png", "a", "validation", carried=True), m("a/2.png", "a", "train")],
              [m("a/5.png", "a", "test"), m("a/6.png", "a", "test")]]
    found = decide(groups, mode="keep")
    assert found.marks == {"a/2.png": ("validation", None)}  # where its content already is in the snapshot
    assert found.counts() == {"groups": 2, "duplicates": 2, "conflicting": 0, "rejected": 0, "cross_split": 0}
    # Rows of an old snapshot (split by name) kept in two splits are counted, not hidden.
    old = decide([[m("a/1.png", "a", "train", carried=True), m("a/2.png", "a", "test", carried=True)]], mode="keep")
    assert old.marks == {} and old.cross_split == 1 and old.new_found == 0


def test_a_carried_row_stays_first_and_a_carried_row_under_a_new_conflict_is_rejected_too():
    found = decide([[m("z/new.png", "a"), m("a/old.png", "a", "test", carried=True)]], mode="reject")
    assert found.marks == {"z/new.png": (None, "duplicate: same content as a/old.png")}
    found = decide([[m("b/new.png", "b"), m("a/old.png", "a", "test", carried=True)]], mode="reject")
    assert set(found.marks) == {"a/old.png", "b/new.png"} and (found.new_found, found.rejected) == (1, 2)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="duplicates 'drop' is not one of reject, keep, off"):
        decide([], mode="drop")


# ----- the jobs --------------------------------------------------------------------------------------------------

def images(spark, src, out, **flags):
    config = load_section("preprocess_images", PreprocessImagesConfig,
                          flags={"ranks": 1, "image_size": 16, "splits": {"train": 0.5, "validation": 0.25,
                                                                           "test": 0.25},
                                 "duplicates_budget": 0.5, **flags})
    return preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), config=config)


def rows_by_fingerprint(snapshot: Path, column: str) -> dict[int, list[tuple[str, str]]]:
    """fingerprint -> [(split, source)] of every row written, read from the splits' Parquet files."""
    found: dict[int, list[tuple[str, str]]] = {}
    for split in SPLITS:
        for f in sorted((snapshot / split).glob("*.parquet")):
            table = pq.read_table(f, columns=["fingerprint", column])
            for fp, source in zip(table.column("fingerprint").to_pylist(), table.column(column).to_pylist()):
                found.setdefault(fp, []).append((split, source))
    return found


def rejected_reasons(snapshot: Path, column: str) -> dict[str, str]:
    if not (snapshot / REJECTED_DIR).exists():
        return {}
    table = pq.read_table(snapshot / REJECTED_DIR, columns=[column, "reason"])
    return dict(zip(table.column(column).to_pylist(), table.column("reason").to_pylist()))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Sample images and planted copies: the same file under another name in its class (a duplicate), the same
    file in another class (a conflict), and a PNG saved again as BMP (other bytes, the same pixels: a duplicate)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("planted") / "in"
    generate_images(root, per_class=6, seed=11, classes=("circle", "square", "ring"))
    shutil.copy(next(root.glob("circle/circle_00000.*")), root / "circle/zz_copy_of_circle_0")
    shutil.copy(next(root.glob("square/square_00001.*")), root / "ring/zz_square_1_under_ring")
    png = next(p for p in sorted(root.glob("ring/ring_*.png")))
    Image.open(png).save(root / "ring" / (png.stem + "_again.bmp"))
    return root


@pytest.mark.spark
def test_planted_copies_are_found_counted_and_never_split(spark, planted, tmp_path, capsys):
    summary = images(spark, planted, tmp_path / "ds")
    snap = snapshot_path(summary)
    reasons = rejected_reasons(snap, "relpath")
    first_circle = next(p.name for p in sorted((planted / "circle").iterdir()) if p.name.startswith("circle_00000"))
    png = next(p for p in sorted(planted.glob("ring/ring_*.png")))
    assert reasons[f"ring/{png.stem}_again.bmp"] == f"duplicate: same content as ring/{png.name}"
    assert reasons["circle/zz_copy_of_circle_0"] == f"duplicate: same content as circle/{first_circle}"
    square = next(p.name for p in planted.glob("square/square_00001.*"))
    assert reasons["ring/zz_square_1_under_ring"] == ("conflicting labels: the same content is labelled ring, "
                                                      f"square (also square/{square})")
    assert reasons[f"square/{square}"].startswith("conflicting labels: ")
    assert len(reasons) == 4
    meta = manifest.read(to_url(str(snap)))
    assert meta.duplicates == manifest.DuplicateCounts(mode="reject", groups=3, duplicates=2, conflicting=2,
                                                       rejected=4, cross_split=0)
    assert meta.rejected_by_reason == {"conflicting labels": 2, "duplicate": 2}
    assert datasets_job.show(str(snap), as_json=False) == 0
    assert ("copies          3 contents held by more than one record: 2 duplicates, 2 under conflicting labels, "
            "4 rejected (duplicates: reject); 0 across splits") in capsys.readouterr().out
    assert meta.records_read == 18 + 3 == meta.rows + meta.rejected
    written = rows_by_fingerprint(snap, "relpath")
    assert sum(len(v) for v in written.values()) == meta.rows == 17 and all(len(v) == 1 for v in written.values())

    # Incremental: a new copy of a committed row is rejected against it; the rejected copies are read again, and
    # when the file they copy is gone, the first copy becomes the row (in the split its content had).
    shutil.copy(png, planted / "ring" / "zzz_new_copy.png")
    second = snapshot_path(images(spark, planted, tmp_path / "ds"))
    assert rejected_reasons(second, "relpath")["ring/zzz_new_copy.png"] == f"duplicate: same content as ring/{png.name}"
    split_of_png = next(split for split, source in sum(written.values(), []) if source == f"ring/{png.name}")
    png.unlink()
    third = snapshot_path(images(spark, planted, tmp_path / "ds", allow_single_class=False))
    after = rejected_reasons(third, "relpath")
    assert after["ring/zzz_new_copy.png"] == f"duplicate: same content as ring/{png.stem}_again.bmp"
    assert [(split, source) for fp, rows in rows_by_fingerprint(third, "relpath").items() for split, source in rows
            if source == f"ring/{png.stem}_again.bmp"] == [(split_of_png, f"ring/{png.stem}_again.bmp")]
    meta3 = manifest.read(to_url(str(third)))
    assert meta3.duplicates.duplicates == 2 and meta3.records_read == meta3.rows + meta3.rejected


@pytest.mark.spark
def test_keep_writes_every_copy_in_one_split_and_the_budget_refuses_too_many(spark, planted, tmp_path):
    snap = snapshot_path(images(spark, planted, tmp_path / "keep", duplicates="keep"))
    meta = manifest.read(to_url(str(snap)))
    assert meta.rejected == 0 and meta.duplicates.rejected == 0 and meta.duplicates.groups == 3
    groups = [rows for rows in rows_by_fingerprint(snap, "relpath").values() if len(rows) > 1]
    assert sorted(len(g) for g in groups) == [2, 2, 2] and all(len({split for split, _ in g}) == 1 for g in groups)

    with pytest.raises(RejectBudgetError, match="4 of the snapshot's 21 records are copies of another record's "
                                                r"content \(19.0%\), more than duplicates_budget 10.0%") as err:
        images(spark, planted, tmp_path / "budget", duplicates_budget=0.1)
    assert err.value.exit_code == EXIT_REJECTS


@pytest.mark.spark
def test_texts_the_same_normalised_text_twice_is_a_copy_and_under_two_labels_a_conflict(spark, tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    lines = [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
             for i in range(40)]
    lines += [{"text": "Review   number 3 was GOOD", "label": "pos"},   # the same normalised text, same label
              {"text": "review number 4 was bad", "label": "pos"}]      # the same text under another label
    (src / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    config = load_section("preprocess_sequences", PreprocessSequencesConfig,
                          flags={"ranks": 1, "duplicates_budget": 0.5, "min_count": 1})
    summary = preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(tmp_path / "ds")),
                                   fmt="jsonl", config=config)
    snap = snapshot_path(summary)
    assert rejected_reasons(snap, "source") == {
        "a.jsonl:41": "duplicate: same content as a.jsonl:4",
        "a.jsonl:5": "conflicting labels: the same content is labelled neg, pos (also a.jsonl:42)",
        "a.jsonl:42": "conflicting labels: the same content is labelled neg, pos (also a.jsonl:5)"}
    meta = manifest.read(to_url(str(snap)))
    assert (meta.duplicates.groups, meta.duplicates.duplicates, meta.duplicates.conflicting) == (2, 1, 2)
    assert meta.records_read == 42 == meta.rows + 3
    assert all(len(rows) == 1 for rows in rows_by_fingerprint(snap, "source").values())
