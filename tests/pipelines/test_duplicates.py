"""Copies of one content (pipelines.duplicates): what ``decide`` marks, without Spark; then planted copies in
image folders and text files found by the real jobs, the counts in the manifest, every copy group in one split
(read back from the written Parquet, not from the code under test), incremental runs and the budget."""
from __future__ import annotations

import io
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from core.config import load_section
from core.errors import EXIT_REJECTS, RejectBudgetError
from core.paths import to_url
from dataset import manifest
from dataset.layout import REJECTED_DIR, SPLITS
from jobs import datasets as datasets_job
from pipelines import duplicates, splits
from pipelines.session import jobs_by_kind
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.samples import generate_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from tests.conftest import snapshot_path


FRACTIONS = {"train": 0.5, "validation": 0.25, "test": 0.25}


def rows(kind, grp, *members, other=None):
    return [{"kind": kind, "grp": grp, "source": s, "name": n, "split": sp, "carried": c, "fingerprint": grp,
             "other": other} for s, n, sp, c in members]


def decide(found_rows, mode="reject", near=False):
    return duplicates.decide(found_rows, mode=mode, fractions=FRACTIONS, near=near)


def test_the_first_copy_stays_later_copies_of_one_class_are_rejected_and_conflicts_reject_every_copy():
    fp = 7  # split_of_hash_value(7) is train
    found = decide(rows("exact", fp, ("a/2.png", "a", "train", False), ("a/1.png", "a", "train", False),
                        ("a/3.png", "a", "train", False))
                   + rows("exact", 8, ("a/9.png", "a", "train", False), ("b/9.png", "b", "train", False)))
    assert found.marks == {
        "a/2.png": (None, "duplicate: same content as a/1.png"),
        "a/3.png": (None, "duplicate: same content as a/1.png"),
        "a/9.png": (None, "conflicting labels: the same content is labelled a, b (also b/9.png)"),
        "b/9.png": (None, "conflicting labels: the same content is labelled a, b (also a/9.png)")}
    assert found.counts() == {"groups": 2, "duplicates": 2, "conflicting": 2, "rejected": 4, "cross_split": 0,
                              "near_groups": None, "near_rows": None}
    assert found.new_rejected == 4


def test_keep_rejects_nothing_counts_the_same_and_moves_a_new_copy_to_its_carried_rows_split():
    found = decide(rows("exact", 7, ("a/1.png", "a", "validation", True), ("a/2.png", "a", "train", False)),
                   mode="keep")
    assert found.marks == {"a/2.png": ("validation", None)}  # where its content already is in the snapshot
    assert (found.groups, found.duplicates, found.rejected, found.cross_split) == (1, 1, 0, 0)
    # Rows of an old snapshot (split by name) kept in two splits are counted, not hidden.
    old = decide(rows("exact", 7, ("a/1.png", "a", "train", True), ("a/2.png", "a", "test", True)), mode="keep")
    assert old.marks == {} and old.cross_split == 1


def test_a_carried_row_stays_first_and_a_carried_row_under_a_new_conflict_is_rejected_too():
    found = decide(rows("exact", 7, ("z/new.png", "a", "train", False), ("a/old.png", "a", "test", True)))
    assert found.marks == {"z/new.png": (None, "duplicate: same content as a/old.png")}
    found = decide(rows("exact", 7, ("b/new.png", "b", "train", False), ("a/old.png", "a", "test", True)))
    assert set(found.marks) == {"a/old.png", "b/new.png"} and (found.new_rejected, found.rejected) == (1, 2)


def test_near_copies_join_one_group_in_the_split_of_its_smallest_fingerprint_or_of_its_carried_rows():
    assert splits.split_of_hash_value(7, FRACTIONS) == "train"
    assert splits.split_of_hash_value(600_003, FRACTIONS) == "validation"
    near = (rows("near", 0, ("a/x.png", "a", "validation", False), other="a/y.png")
            + rows("near", 0, ("a/y.png", "a", "test", False), other="a/x.png")
            + rows("near", 0, ("a/y.png", "a", "test", False), other="a/z.png")
            + rows("near", 0, ("a/z.png", "a", "train", False), other="a/y.png"))
    for r, fp in zip(near, (600_003, 900_001, 900_001, 7)):
        r["fingerprint"] = fp
    found = decide(near, near=True)
    assert found.marks == {"a/x.png": ("train", None), "a/y.png": ("train", None)}  # a chain is one group
    assert (found.near_groups, found.near_rows, found.groups, found.cross_split) == (1, 3, 0, 0)
    near[-1]["carried"], near[-1]["split"] = True, "test"
    assert decide(near, near=True).marks == {"a/x.png": ("test", None)}  # a/y.png was in test already


def test_resized_and_reencoded_copies_share_a_near_key_and_pass_the_check_and_different_images_do_not():
    """The search's two parts on 300 sample images and 100 copies resized to 50-90 % and saved as JPEG."""
    from PIL import Image

    from pipelines.images import DecodeParams, thumbnail, to_array
    from pipelines.samples import SHAPE_CLASSES, render_shape
    from pipelines.samples import encode as encode_image

    params = DecodeParams(image_size=32, channels=3, codec="raw", max_pixels=10**8, min_side=4, max_aspect_ratio=10,
                          thumbnails=True)
    rng = np.random.default_rng(5)
    thumbs, planted = [], []
    for i in range(300):
        img = render_shape(SHAPE_CLASSES[i % 10], rng)
        thumbs.append(thumbnail(to_array(encode_image(img, "RGB", "PNG"), params)))
        if i < 100:
            w, h = img.size
            f = rng.uniform(0.5, 0.9)
            out = io.BytesIO()
            img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.LANCZOS).save(out, "JPEG", quality=85)
            thumbs.append(thumbnail(to_array(out.getvalue(), params)))
            planted.append((len(thumbs) - 2, len(thumbs) - 1))
    array = np.frombuffer(b"".join(thumbs), np.uint8).reshape(len(thumbs), 64)
    buckets = defaultdict(list)
    for i, keys in enumerate(duplicates.near_keys(array)):
        for table, key in enumerate(keys):
            buckets[(table, int(key))].append(i)
    pairs = set()
    for members in buckets.values():
        pairs |= {(members[a], members[b]) for a, b in duplicates.near_pairs(array[members])}
    grouped = sum(p in pairs for p in planted)
    assert grouped >= 0.95 * len(planted)
    assert pairs <= set(planted)  # no two different pictures linked
    assert sum(len(m) * (len(m) - 1) // 2 for m in buckets.values()) < 10 * len(thumbs)  # few candidates


def test_the_python_pass_finds_buckets_in_any_row_order_and_cut_into_batches_and_skips_one_row_buckets():
    import pyarrow as pa

    thumbs = {"x": bytes(64), "y": bytes([3]) * 64, "far": bytes([200]) * 64}
    rows = [(-1, 5, "a/1.png", None), (-1, 5, "a/2.png", None), (-1, 6, "a/3.png", None),
            (0, 9, "a/x.png", "x"), (0, 9, "a/y.png", "y"), (0, 9, "a/far.png", "far"), (1, 4, "a/z.png", "x")]
    table = pa.table({"tbl": pa.array([r[0] for r in rows], pa.int32()), "key": [r[1] for r in rows],
                      "fingerprint": [len(r[2]) for r in rows], "source": [r[2] for r in rows],
                      "name": ["a"] * len(rows), "split": ["train"] * len(rows), "carried": [False] * len(rows),
                      "thumbnail": pa.array([thumbs.get(r[3]) if r[3] else None for r in rows], pa.binary())})
    rng = np.random.default_rng(2)
    for size in (1, 2, 3, 7):  # every order and cut of the partition into batches gives the same rows
        shuffled = table.take(pa.array(rng.permutation(len(rows))))
        found = [r for b in duplicates.walk(iter(shuffled.to_batches(max_chunksize=size))) for r in b.to_pylist()]
        assert sorted((r["source"], r["other"]) for r in found if r["kind"] == "exact") == [
            ("a/1.png", None), ("a/2.png", None)], size
        near = {r["source"]: r["other"] for r in found if r["kind"] == "near"}
        assert set(near) == {"a/x.png", "a/y.png"} and len(set(near.values())) == 1, size  # each to its set's first
        assert set(near.values()) <= set(near), size


def test_without_an_exact_table_the_python_pass_finds_exact_copies_in_the_first_near_tables_buckets():
    import pyarrow as pa

    rows = [(1, 3, 1, "b/x.png"), (0, 9, 1, "a/x.png"), (0, 9, 2, "a/y.png"), (1, 3, 1, "a/x.png"),
            (0, 9, 1, "b/x.png")]  # in no order: ``walk`` sorts them
    thumbs = {1: bytes(64), 2: bytes([2]) * 64}
    table = pa.table({"tbl": pa.array([r[0] for r in rows], pa.int32()), "key": [r[1] for r in rows],
                      "fingerprint": [r[2] for r in rows], "source": [r[3] for r in rows],
                      "name": [r[3][0] for r in rows], "split": ["train"] * len(rows), "carried": [False] * len(rows),
                      "thumbnail": pa.array([thumbs[r[2]] for r in rows], pa.binary())})
    for size in (1, 2, 5):
        found = [r for b in duplicates.walk(iter(table.to_batches(max_chunksize=size)), exact_table=0)
                 for r in b.to_pylist()]
        assert sorted((r["kind"], r["grp"], r["source"]) for r in found if r["kind"] == "exact") == [
            ("exact", 1, "a/x.png"), ("exact", 1, "b/x.png")], size  # once, from table 0 only
        assert {r["source"] for r in found if r["kind"] == "near"} == {"a/x.png", "b/x.png", "a/y.png"}
        found = [r for b in duplicates.walk(iter(table.to_batches(max_chunksize=size))) for r in b.to_pylist()]
        assert not [r for r in found if r["kind"] == "exact"]  # with an exact table (-1), only its buckets count


def test_the_python_pass_links_the_same_sets_of_close_rows_as_comparing_every_pair_of_each_bucket():
    """Random thumbnails in clusters, a bucket of 600 near-same ones (compared a block at a time) among them: the
    sets ``walk`` links (joined by source, as ``decide`` does) are the connected components of every close pair
    that shares a bucket, whatever the cut into batches."""
    import pyarrow as pa

    rng = np.random.default_rng(3)
    centres = rng.integers(0, 256, (60, 64))
    thumbs = np.clip(centres[rng.integers(0, 60, 900)] + rng.integers(-9, 10, (900, 64)), 0, 255)
    thumbs = np.r_[thumbs, np.clip(5 + rng.integers(-2, 3, (600, 64)), 0, 255)].astype(np.uint8)
    sources = [f"c/{i:04d}.png" for i in range(len(thumbs))]
    keyed = sorted((t, int(k), sources[i]) for i, keys in enumerate(duplicates.near_keys(thumbs))
                   for t, k in enumerate(keys))
    index = {s: i for i, s in enumerate(sources)}
    table = pa.table({"tbl": pa.array([t for t, _, _ in keyed], pa.int32()), "key": [k for _, k, _ in keyed],
                      "fingerprint": [index[s] for _, _, s in keyed], "source": [s for _, _, s in keyed],
                      "name": ["c"] * len(keyed), "split": ["train"] * len(keyed),
                      "carried": [False] * len(keyed),
                      "thumbnail": pa.array([thumbs[index[s]].tobytes() for _, _, s in keyed], pa.binary())})
    buckets = defaultdict(list)
    for t, k, s in keyed:
        buckets[(t, k)].append(index[s])
    def close(members):  # every pair of a bucket, compared here without the module's code
        t = thumbs[members].astype(int)
        i, j = np.nonzero(np.abs(t[:, None, :] - t[None, :, :]).mean(axis=2) <= duplicates.NEAR_MEAN_DIFF)
        return [(members[a], members[b]) for a, b in zip(i, j) if a < b]

    expected = components(len(thumbs), [pair for m in buckets.values() for pair in close(m)])
    assert max(len(m) for m in buckets.values()) > duplicates.BLOCK and len(expected) > 60
    for size in (97, 1000, len(keyed)):
        shuffled = table.take(pa.array(rng.permutation(len(keyed))))
        found = [r for b in duplicates.walk(iter(shuffled.to_batches(max_chunksize=size))) for r in b.to_pylist()]
        assert {r["kind"] for r in found} == {"near"}
        # at most a row per source, not one per close pair (the 600 alone have ~180,000)
        assert len(found) <= len(thumbs)
        assert components(len(thumbs), [(index[r["source"]], index[r["other"]]) for r in found]) == expected, size


def components(n: int, pairs) -> set[frozenset]:
    """The sets of more than one of ``range(n)`` that ``pairs`` link."""
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            parent[x] = x = parent[parent[x]]
        return x

    for a, b in pairs:
        parent[root(a)] = root(b)
    sets = defaultdict(set)
    for x in range(n):
        sets[root(x)].add(x)
    return {frozenset(s) for s in sets.values() if len(s) > 1}


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="duplicates 'drop' is not one of reject, keep, ignore"):
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
    for source in NEAR_PLANTED:  # near copies: 70 % of the size, saved as JPEG
        img = Image.open(next(root.glob(source + ".*"))).convert("RGB")
        img.resize((img.width * 7 // 10, img.height * 7 // 10), Image.LANCZOS).save(
            root / f"{source}_small.jpg", "JPEG", quality=85)
    return root


NEAR_PLANTED = ("circle/circle_00002", "square/square_00003", "ring/ring_00004")


@pytest.mark.spark
def test_planted_copies_are_found_counted_and_never_split(spark, planted, tmp_path, capsys):
    before = jobs_by_kind(spark)
    summary = images(spark, planted, tmp_path / "ds")
    after = jobs_by_kind(spark)
    assert {kind: len(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]} == {
        "duplicates": 1, "aggregate": 1, "write": 1, "rejected": 1}  # the marks cost no job of their own
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
                                                       rejected=4, cross_split=0, near_groups=3, near_rows=6)
    assert meta.rejected_by_reason == {"conflicting labels": 2, "duplicate": 2}
    assert datasets_job.show(str(snap), as_json=False) == 0
    assert ("copies          3 contents held by more than one record: 2 duplicates, 2 under conflicting labels, "
            "4 rejected (duplicates: reject); 3 groups of near copies (6 rows); 0 groups across splits"
            ) in capsys.readouterr().out
    assert meta.records_read == 18 + 3 + 3 == meta.rows + meta.rejected
    written = rows_by_fingerprint(snap, "relpath")
    assert sum(len(v) for v in written.values()) == meta.rows == 20 and all(len(v) == 1 for v in written.values())
    split_of = {source: split for rows in written.values() for split, source in rows}
    for near in NEAR_PLANTED:  # each near copy in its original's split
        original = next(r for r in split_of if r.startswith(near + ".") and "_small" not in r)
        assert split_of[f"{near}_small.jpg"] == split_of[original]

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
def test_keep_writes_every_copy_in_one_split_and_the_budget_refuses_too_many(spark, planted, tmp_path, monkeypatch):
    snap = snapshot_path(images(spark, planted, tmp_path / "keep", duplicates="keep"))
    meta = manifest.read(to_url(str(snap)))
    assert meta.rejected == 0 and meta.duplicates.rejected == 0 and meta.duplicates.groups == 3
    groups = [rows for rows in rows_by_fingerprint(snap, "relpath").values() if len(rows) > 1]
    assert sorted(len(g) for g in groups) == [2, 2, 2] and all(len({split for split, _ in g}) == 1 for g in groups)
    assert meta.duplicates.near_groups == 3

    # Very many marks are joined as a broadcast table instead of map literals: the same snapshot.
    monkeypatch.setattr(duplicates, "LITERAL_MARKS", 0)
    joined = snapshot_path(images(spark, planted, tmp_path / "keep-joined", duplicates="keep"))
    assert rows_by_fingerprint(joined, "relpath") == rows_by_fingerprint(snap, "relpath")

    # Rows of a snapshot written before fingerprints get them from their stored pixels, as a new row would.
    from pipelines.images import DecodeParams, stored_fingerprints

    stored = spark.read.parquet(str(snap / "train"))
    params = DecodeParams(image_size=16, channels=meta.image.channels, codec=meta.image.codec, max_pixels=1, min_side=1,
                          max_aspect_ratio=1)
    again = duplicates.carried_fingerprints(stored.drop("fingerprint").withColumn("reason", F.lit(None)),
                                            stored_fingerprints(params)(F.col("image")))
    assert sorted(again.select("fingerprint").toPandas()["fingerprint"]) == sorted(
        stored.select("fingerprint").toPandas()["fingerprint"])

    with pytest.raises(RejectBudgetError, match="4 of the snapshot's 24 records are copies of another record's "
                                                r"content \(16.7%\), more than duplicates_budget 10.0%") as err:
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


def test_the_near_search_has_a_partition_per_quarter_million_keyed_rows_whatever_the_shuffle_setting():
    """Its Python workers hold a partition whole: 100 million images on 16 partitions would be 25 million rows
    each. The exact search alone is Spark's aggregation and keeps to spark.sql.shuffle.partitions."""
    assert (duplicates.NEAR_TABLES, duplicates.ROWS_PER_PARTITION) == (4, 250_000)  # 5 keyed rows a member
    assert duplicates.partitions(64_000, near=True, most=16) == 2  # 320,000 keyed rows
    assert duplicates.partitions(10**8, near=True, most=16) == 2_000
    assert duplicates.partitions(10**8, near=False, most=16) == 16
    assert duplicates.partitions(0, near=True, most=16) == duplicates.partitions(10, near=False, most=16) == 1
