"""The Spark side of the image transforms, on DataFrames built in the test."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from pipelines.images import DecodeParams, decode_images
from pipelines.inputs import list_files
from pipelines.labels import assign_labels
from pipelines.reading import files_frame
from pipelines.routing import row_groups_for

pytestmark = pytest.mark.spark


def png(colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(out, "PNG")
    return out.getvalue()


def test_decode_images_reads_in_the_workers_and_keeps_every_row(spark, tmp_path):
    files = {f"{'red' if i % 2 else 'blue'}/{i}.png": png((i, 0, 0)) for i in range(40)}
    files.update({"red/bad.png": b"nope", "loose.png": png((1, 1, 1))})
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    root = f"file:{tmp_path}"
    frame = files_frame(spark, list_files(root).entries).repartition(3)
    params = DecodeParams(image_size=4, channels=1, codec="raw", max_pixels=10**6, min_side=2, max_aspect_ratio=5.0)
    out = {r["relpath"]: r for r in decode_images(frame, root_url=root, params=params).collect()}
    assert len(out) == 42
    assert sum(r["reason"] is None for r in out.values()) == 40
    assert "not a readable image" in out["red/bad.png"]["reason"]
    assert "missing label" in out["loose.png"]["reason"]


def test_assign_labels_maps_classes_and_rejects_unknown_ones(spark):
    decoded = spark.createDataFrame(
        [("p1", "a/1", "a", b"x", None), ("p2", "b/2", "b", b"x", None), ("p3", "zz/3", "zz", b"x", None),
         ("p4", "4", None, None, "missing label: file is directly in the input root")],
        "path string, relpath string, class_name string, image binary, reason string")
    out = {r["path"]: r for r in assign_labels(decoded, class_to_index={"a": 0, "b": 1}).collect()}
    assert (out["p1"]["label"], out["p2"]["label"]) == (0, 1)
    assert out["p1"]["reason"] is None
    assert out["p3"]["label"] is None and "class_name zz is not in the label map" in out["p3"]["reason"]
    assert out["p4"]["reason"].startswith("missing label: file is directly")


@pytest.mark.parametrize("rows, size_mb, ranks, expected", [
    (0, 0, 4, 0),                 # an empty split writes nothing
    (1000, 10, 4, 4),             # small: one row group per expected rank
    (3, 10, 4, 3),                # never more row groups than rows
    (1000, 120 * 2**20, 4, 8),    # 120 MB at 32 MB row groups, 80% fill -> 5 by size -> rounded up to 2 x 4
    (10**6, 1000 * 2**20, 3, 42), # ceil(1000 / 25.6) = 40 -> next multiple of 3
])
def test_row_groups_are_a_multiple_of_the_expected_ranks(rows, size_mb, ranks, expected):
    assert row_groups_for(rows, size_mb, row_group_size_mb=32, shard_multiple=ranks) == expected


@pytest.mark.parametrize("rows, files", [(1000, {"test": 2, "train": 7, "validation": 3}), (11, {"train": 3}),
                                         (30, {"test": 8, "train": 1, "validation": 5})])
def test_route_makes_each_splits_files_equal_to_one_row_in_one_shuffle(spark, rows, files):
    from pyspark.sql import functions as F

    from pipelines.routing import route

    # Many small, uneven input partitions (where round-robin repartition() was seen to give 5/3/3), the splits
    # interleaved within each: every split's files must still be equal to within one row.
    names = sorted(files)
    df = (spark.range(rows).repartition(23, (F.col("id") % 5))
          .withColumn("split", F.element_at(F.array(*map(F.lit, names)),
                                            (F.col("id") * 7 % len(names) + 1).cast("int")))
          .persist())
    counts = {(r["pid"], r["split"]): r["n"] for r in df.groupBy(F.spark_partition_id().alias("pid"), "split")
              .agg(F.count(F.lit(1)).alias("n")).collect()}
    out = route(df, counts, files)
    assert out.rdd.getNumPartitions() == sum(files.values())
    by_part = {}
    for r in out.groupBy(F.spark_partition_id().alias("p"), "split").agg(F.count(F.lit(1)).alias("n")).collect():
        by_part.setdefault(r["p"], {})[r["split"]] = r["n"]
    assert all(len(splits) == 1 for splits in by_part.values()), "a file holds rows of two splits"
    for split in names:
        sizes = [n for part in by_part.values() for s, n in part.items() if s == split]
        assert len(sizes) == files[split] and max(sizes) - min(sizes) <= 1, (split, sizes)
    assert sorted(r["id"] for r in out.collect()) == list(range(rows))
    df.unpersist()


def test_spark_hash_long_matches_sparks_hash(spark):
    from pyspark.sql import functions as F

    from pipelines.routing import spark_hash_long

    values = list(range(-50, 200)) + [2**31, -(2**31) - 1, 2**62 + 12345, -(2**63)]
    df = spark.createDataFrame([(v,) for v in values], "v long")
    got = {r["v"]: r["h"] for r in df.select("v", F.hash("v").alias("h")).collect()}
    assert all(spark_hash_long(v) == got[v] for v in values)
