"""The preprocessing jobs in few Spark passes: the jobs each run launches (counted with Spark's status tracker),
no rejected write when nothing is rejected, and splits that stay Petastorm datasets whose metadata is what
Petastorm's own ``materialize_dataset`` writes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.config import load_section
from core.paths import to_url
from dataset import manifest
from dataset.layout import REJECTED_DIR, SPLITS
from pipelines.image_dataset import PreprocessImagesConfig, preprocess_images
from pipelines.sequence_dataset import PreprocessSequencesConfig, preprocess_sequences
from pipelines.samples import encode, generate_images, generate_texts, render_shape
from tests.conftest import snapshot_path

pytestmark = pytest.mark.spark

KINDS = ("duplicates", "aggregate", "vocabulary", "write", "rejected")  # pipelines.session.JOB_KINDS


def job_ids(spark) -> dict[str, set[int]]:
    """Every job id Spark's status tracker holds, by job group (bigtrain's kinds; None: no group)."""
    tracker = spark.sparkContext.statusTracker()
    found = {kind: set(tracker.getJobIdsForGroup(f"bigtrain:{kind}")) for kind in KINDS}
    found[None] = set(tracker.getJobIdsForGroup(None))
    return found


def jobs_launched(spark, run) -> tuple[dict, dict[str, int]]:
    """(what ``run()`` returned, the Spark jobs it launched per kind, those of no kind under None)."""
    before = job_ids(spark)
    result = run()
    after = job_ids(spark)
    return result, {kind: len(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}


def images(spark, src, out, **flags):
    config = load_section("preprocess_images", PreprocessImagesConfig, flags={"ranks": 2, "image_size": 16, **flags})
    return preprocess_images(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), config=config)


def texts(spark, src, out, **flags):
    config = load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2, **flags})
    return preprocess_sequences(spark, input_url=to_url(str(src)), output_url=to_url(str(out)), fmt="jsonl",
                                config=config)


def test_an_image_run_launches_three_spark_jobs_and_one_more_for_rejects(spark, tmp_path):
    """The listing is bigtrain's (``pipelines.inputs``), on the driver: no Spark job."""
    generate_images(tmp_path / "in", per_class=8, seed=5)
    summary, jobs = jobs_launched(spark, lambda: images(spark, tmp_path / "in", tmp_path / "ds"))
    assert summary["rejected"] == 0 and all(s["rows"] for s in summary["splits"].values())
    assert jobs == {"duplicates": 1, "aggregate": 1, "write": 1}

    generate_images(tmp_path / "bad", per_class=8, seed=5, bad_files=4)
    summary, jobs = jobs_launched(spark, lambda: images(spark, tmp_path / "bad", tmp_path / "ds-bad"))
    assert summary["rejected"] == 4
    assert jobs == {"duplicates": 1, "aggregate": 1, "write": 1, "rejected": 1}


def test_a_text_run_launches_three_spark_jobs_the_vocabulary_counted_in_the_aggregation(spark, tmp_path):
    generate_texts(tmp_path / "in", records=400, files=3, seed=2)
    summary, jobs = jobs_launched(spark, lambda: texts(spark, tmp_path / "in", tmp_path / "ds"))
    assert summary["rejected"] == 0 and all(s["rows"] for s in summary["splits"].values())
    assert jobs == {"duplicates": 1, "aggregate": 1, "write": 1}


def test_a_csv_run_reads_its_headers_quote_states_and_line_numbers_in_the_reading_job(spark, tmp_path):
    """Each file is read whole by one Python worker (``pipelines.text.file_records``), which knows its header,
    its quote states and its line numbers: no Spark job of their own."""
    generate_texts(tmp_path / "in", records=300, files=3, seed=4, fmt="csv")
    summary, jobs = jobs_launched(spark, lambda: preprocess_sequences(
        spark, input_url=to_url(str(tmp_path / "in")), output_url=to_url(str(tmp_path / "ds")), fmt="csv",
        config=load_section("preprocess_sequences", PreprocessSequencesConfig, flags={"ranks": 2})))
    assert summary["records_read"] == 300 and summary["rejected"] == 0
    assert jobs == {"duplicates": 1, "aggregate": 1, "write": 1}


def test_nothing_rejected_writes_no_rejected_table_and_the_snapshot_still_verifies_and_grows(spark, tmp_path, capsys):
    from jobs.datasets import main as datasets
    from jobs.verify import main as verify

    generate_images(tmp_path / "in", per_class=6, seed=7)
    first = images(spark, tmp_path / "in", tmp_path / "ds")
    assert first["rejected"] == 0 and not (snapshot_path(first) / REJECTED_DIR).exists()
    assert manifest.read(first["output"]).rejected == 0
    assert verify([str(tmp_path / "ds")]) == 0 and datasets(["show", str(tmp_path / "ds")]) == 0
    capsys.readouterr()

    rng = np.random.default_rng(8)
    for i, path in enumerate(sorted((tmp_path / "in").rglob("*.png"))[:2]):  # two new pictures, two unusable files
        path.with_name(f"new_{i}.png").write_bytes(encode(render_shape(path.parent.name, rng), "RGB", "PNG"))
        path.with_name(f"broken_{i}.png").write_bytes(b"not an image")
    second = images(spark, tmp_path / "in", tmp_path / "ds", max_reject_fraction=1.0)  # incremental: rows carried
    assert second["processed"] == (4, 2) and second["rejected"] == 2
    assert second["records_read"] == first["records_read"] + 4 == second["rows_written"] + 2
    assert len(pq.read_table(snapshot_path(second) / REJECTED_DIR)) == 2
    assert verify([str(tmp_path / "ds")]) == 0


def test_splits_open_in_plain_petastorm_and_hold_materialize_datasets_metadata(spark, tmp_path):
    from compat import petastorm as petastorm_compat

    petastorm_compat.install()  # before Petastorm's first import (it needs the layer on pyarrow >= 15)
    from petastorm import make_batch_reader, make_reader
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import Unischema

    from pipelines.schemas import image_unischema

    generate_images(tmp_path / "in", per_class=6, seed=9)
    summary = images(spark, tmp_path / "in", tmp_path / "ds", ranks=3)
    train = snapshot_path(summary) / "train"
    with make_reader(to_url(str(train)), schema_fields=["relpath", "image"], num_epochs=1, workers_count=1,
                     shuffle_rows=False, shuffle_row_groups=False) as reader:
        rows = list(reader)
    assert len(rows) == summary["splits"]["train"]["rows"] and rows[0].image.shape == (16, 16, 3)
    with make_batch_reader(to_url(str(train)), schema_fields=["sample_id", "label"], num_epochs=1,
                           workers_count=1, shuffle_row_groups=False) as reader:
        assert sum(len(batch.sample_id) for batch in reader) == len(rows)

    # Petastorm's own metadata pass over a copy of the same files writes the same _common_metadata.
    copy = tmp_path / "copy"
    shutil.copytree(train, copy, ignore=shutil.ignore_patterns("_common_metadata", "._common_metadata.crc"))
    codec = json.loads((snapshot_path(summary) / "metadata.json").read_text())["image"]["codec"]
    with materialize_dataset(spark, to_url(str(copy)), image_unischema(16, 3, codec), row_group_size_mb=32):
        pass  # the files are there already: only its metadata step runs
    ours, theirs = pq.read_metadata(train / "_common_metadata"), pq.read_metadata(copy / "_common_metadata")
    assert ours.metadata == theirs.metadata and ours.schema.equals(theirs.schema)
    assert (train / "_common_metadata").read_bytes() == (copy / "_common_metadata").read_bytes()
    keys = ours.metadata
    assert set(keys) >= {b"dataset-toolkit.unischema.v1", b"dataset-toolkit.num_row_groups_per_file.v1"}
    assert isinstance(__import__("pickle").loads(keys[b"dataset-toolkit.unischema.v1"]), Unischema)
    assert sorted(p.name for p in train.glob("*.parquet")) == sorted(
        __import__("json").loads(keys[b"dataset-toolkit.num_row_groups_per_file.v1"]))
    for split in SPLITS:  # one row group per file, a multiple of the ranks, near-equal; the _SUCCESS marker kept
        files = sorted((snapshot_path(summary) / split).glob("*.parquet"))
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
        assert all(pq.ParquetFile(f).metadata.num_row_groups == 1 for f in files)
        assert len(sizes) == min(3, sum(sizes)) and max(sizes) - min(sizes) <= 1
        assert (snapshot_path(summary) / split / "_SUCCESS").exists()
    assert not (snapshot_path(summary) / "_bt_splits").exists()
