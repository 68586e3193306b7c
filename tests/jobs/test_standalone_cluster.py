"""The preprocessing jobs on a real Spark standalone cluster (a master and two workers on this machine), submitted
with spark-submit --py-files from a folder where bigtrain is not importable: the same dataset as in local mode."""
from __future__ import annotations

import json
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from dataset.layout import SPLITS
from tests.conftest import REPO, current_snapshot, subprocess_env, tool

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.slow]


def submit(cluster: str, python: str, dist_zip, job: str, args: list[str], cwd,
           quiet: bool = True) -> subprocess.CompletedProcess:
    script = cwd / job
    shutil.copy(REPO / "jobs" / job, script)  # the entry script alone; everything it imports comes from the zip
    env = {**subprocess_env(), "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
    cmd = [tool("spark-submit"), "--master", cluster, "--py-files", str(dist_zip),
           "--conf", f"spark.pyspark.python={python}", "--conf", "spark.executor.memory=768m",
           "--conf", "spark.sql.shuffle.partitions=4", str(script), *args] + (["--quiet"] if quiet else [])
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def rows_by_split(dataset, key: str) -> dict[str, dict]:
    out = {}
    for split in SPLITS:
        table = pq.read_table(dataset / split, columns=[key, "label"])
        for k, label in zip(table.column(key).to_pylist(), table.column("label").to_pylist()):
            out[k] = (split, label)
    return out


def test_the_image_job_on_the_cluster_writes_the_local_dataset(standalone_cluster, python_without_bigtrain, dist_zip,
                                                               sample_images, image_dataset, tmp_path):
    assert subprocess.run([python_without_bigtrain, "-c", "import jobs"], cwd=tmp_path,
                          capture_output=True).returncode != 0  # the project really is not importable here
    out = tmp_path / "ds"
    done = submit(standalone_cluster, python_without_bigtrain, dist_zip, "preprocess_images.py",
                  ["--input", str(sample_images), "--output", str(out), "--image-size", "16", "--ranks", "3"], tmp_path)
    assert "files read" in done.stdout
    out = current_snapshot(out)
    cluster_meta, local_meta = (json.loads((d / "metadata.json").read_text()) for d in (out, image_dataset))
    for key in ("records_read", "rejected", "classes", "splits", "rejected_by_reason"):
        assert cluster_meta[key] == local_meta[key], key
    assert rows_by_split(out, "relpath") == rows_by_split(image_dataset, "relpath")


def test_the_sequence_job_on_the_cluster_writes_the_local_dataset(standalone_cluster, python_without_bigtrain,
                                                                  dist_zip, sample_texts, text_dataset, tmp_path):
    out = tmp_path / "ds"
    submit(standalone_cluster, python_without_bigtrain, dist_zip, "preprocess_sequences.py",
           ["--input", str(sample_texts), "--output", str(out), "--ranks", "3", "--max-length", "24"], tmp_path)
    out = current_snapshot(out)
    cluster_meta, local_meta = (json.loads((d / "metadata.json").read_text()) for d in (out, text_dataset))
    for key in ("records_read", "rejected", "classes", "splits", "rejected_by_reason"):
        assert cluster_meta[key] == local_meta[key], key
    assert (out / "vocab.json").read_text() == (text_dataset / "vocab.json").read_text()
    assert rows_by_split(out, "source") == rows_by_split(text_dataset, "source")


def test_training_runs_on_the_cluster_executors(standalone_cluster, python_without_bigtrain, dist_zip, image_dataset,
                                                tmp_path):
    """spark-submit jobs/train.py --launcher spark: the Horovod ranks are tasks on the two workers."""
    out = tmp_path / "model"
    done = submit(standalone_cluster, python_without_bigtrain, dist_zip, "train.py",
                  ["--launcher", "spark", "--num-proc", "2", "--data", str(image_dataset), "--output", str(out),
                   "--epochs", "1", "--batch-size", "8", "--no-progress"], tmp_path, quiet=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["test_rows"] == json.loads(
        (image_dataset / "metadata.json").read_text())["splits"]["test"]["rows"]
    assert "train: test accuracy" in done.stdout
