"""Datasets behind the S3 API: the loader, the metadata checks and training read s3:// URLs from a local
S3-compatible server, with endpoint and credentials from the environment only."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.config import load_section
from core.errors import DatasetError
from dataset.info import load_dataset_info
from tests.conftest import REPO, subprocess_env
from training.config import TrainConfig
from training.distributed import SingleProcess
from training.wiring import fit
from training.petastorm_source import PetastormSource
from training.shards import plan_shard

pytestmark = pytest.mark.spark


@pytest.fixture
def s3_dataset(s3_server, image_dataset, monkeypatch):
    import fsspec
    import s3fs

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    fsspec.config.conf.clear()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists("bigtrain-test"):
        fs.mkdir("bigtrain-test")
    fs.put(str(image_dataset), "bigtrain-test/images", recursive=True)
    yield "s3://bigtrain-test/images"
    s3fs.S3FileSystem.clear_instance_cache()


def test_the_loader_reads_every_row_from_s3(s3_dataset, image_dataset):
    remote, local = load_dataset_info(s3_dataset), load_dataset_info(str(image_dataset))
    assert {k: v.row_group_sizes for k, v in remote.splits.items()} == \
           {k: v.row_group_sizes for k, v in local.splits.items()}
    split = remote.splits["train"]
    source = PetastormSource(remote, load_section("train", TrainConfig, overrides=["train.loader_workers=2"]))
    seen = []
    try:
        for rank in range(2):
            plan = plan_shard(split.row_group_sizes, rank, 2)
            for _, _, ids in source.evaluation_batches("train", plan, batch_size=16):
                seen.extend(ids.tolist())
    finally:
        source.close()
    assert len(seen) == len(set(seen)) == split.rows


def test_training_reads_an_s3_dataset(s3_dataset, tmp_path):
    config = load_section("train", TrainConfig, overrides=["train.epochs=2", "train.progress_bar=never"])
    metrics = fit(config, data_url=s3_dataset, output_dir=tmp_path, dist=SingleProcess()).metrics
    assert metrics["dataset"] == s3_dataset and metrics["test_rows"] == load_dataset_info(s3_dataset).splits["test"].rows


def test_the_train_job_takes_the_endpoint_from_the_environment(s3_dataset, s3_server, tmp_path):
    env = {**subprocess_env(), **s3_server}
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--data", s3_dataset, "--output",
                           str(tmp_path / "m"), "--epochs", "1", "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["dataset"] == s3_dataset


def test_a_wrong_endpoint_is_named(monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(DatasetError, match=r"cannot read s3://nowhere/ds/metadata.json.*127\.0\.0\.1:9"):
        load_dataset_info("s3://nowhere/ds")
    s3fs.S3FileSystem.clear_instance_cache()
