"""Real horovodrun runs with two processes talking over Gloo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.paths import to_url
from tests.conftest import REPO, second_host_name, subprocess_env, tool

pytestmark = [pytest.mark.horovod, pytest.mark.spark]


def horovodrun(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [tool("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, *args]
    done = subprocess.run(cmd, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"horovodrun failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.parametrize("dataset_fixture", ["image_dataset", "text_dataset"])
def test_two_ranks_read_disjoint_shards_and_keep_identical_weights(dataset_fixture, request, tmp_path):
    dataset = request.getfixturevalue(dataset_fixture)
    horovodrun([str(REPO / "tests" / "training" / "horovod_worker.py"), str(dataset), str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["size"] for r in ranks] == [2, 2] and sorted(r["rank"] for r in ranks) == [0, 1]
    train_ids = pq.read_table(dataset / "train", columns=["sample_id"]).column("sample_id").to_pylist()
    shards = [set(r["shard"]) for r in ranks]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(train_ids) and sum(len(r["shard"]) for r in ranks) == len(train_ids)
    assert len(shards[0]) != len(shards[1])  # 3 row groups over 2 ranks: uneven shards, still equal steps
    assert ranks[0]["steps"] == ranks[1]["steps"]
    assert [r["first_pass"] for r in ranks] == [len(r["shard"]) for r in ranks]
    weights = [np.load(tmp_path / f"weights_rank{r}.npy") for r in range(2)]
    assert np.array_equal(weights[0], weights[1])
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


def test_a_data_typo_under_horovodrun_is_one_line_from_rank_0(tmp_path):
    """Every rank reads the same command line: its mistake is said once, with bigtrain's code in the ranks' exits."""
    cmd = [tool("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(REPO / "jobs" / "train.py"),
           "--data", str(tmp_path / "no-such-dataset"), "--output", str(tmp_path / "m")]
    done = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    everything = done.stdout + done.stderr
    assert done.returncode != 0 and everything.count("error: --data") == 1, everything[-3000:]
    assert f"error: --data {to_url(str(tmp_path / 'no-such-dataset'))}: no such dataset folder" in everything
    assert "Traceback" not in "".join(line for line in everything.splitlines(True) if "<std" in line)  # the ranks'


def test_train_job_under_horovodrun_logs_once_and_writes_outputs(image_dataset, tmp_path):
    done = horovodrun([str(REPO / "jobs" / "train.py"), "--data", str(image_dataset), "--output", str(tmp_path / "m"),
                       "--epochs", "2", "--batch-size", "8", "--no-progress"], tmp_path)
    assert done.stdout.count("train: test accuracy") == 1
    everything = done.stdout + done.stderr
    assert "INFO bigtrain.train: epoch 2/2" in everything  # rank 0 logs ...
    assert "INFO" not in _rank1_lines(done)                # ... rank 1 does not
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 2
    assert (tmp_path / "m" / "checkpoint.pt").is_file()
    # the stage ledger: every rank's epoch gathered on rank 0, named in its epoch line, drawn in stages.png
    for record in metrics["history"]:
        ledger = record["ledger"]
        assert [r["rank"] for r in ledger["ranks"]] == [0, 1]
        for rank in ledger["ranks"]:
            assert sum(rank["trainer_s"].values()) == pytest.approx(rank["wall_s"], abs=2e-3)
            assert rank["loader_s"]["read"] > 0 and rank["workers"] >= 1
        assert ledger["slowest_shard"]["row_groups"] >= 1 and ledger["slowest_shard"]["files"]
    slowest = metrics["history"][-1]["ledger"]["slowest_rank"]
    assert f"| slowest rank {slowest} (" in everything
    assert (tmp_path / "m" / "stages.png").is_file()


def _rank1_lines(done: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in (done.stdout + done.stderr).splitlines() if line.startswith("[1]"))


def test_horovodrun_over_two_host_names_with_a_hostfile(image_dataset, tmp_path):
    """Two names for this machine (localhost and 127.0.0.1) are two hosts to Horovod: each gets one rank, Gloo
    talks over the loopback interface named with --network-interface, and no ssh is needed."""
    hostname = second_host_name()
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"localhost slots=1\n{hostname} slots=1\n")
    cmd = [tool("horovodrun"), "-np", "2", "-hostfile", str(hostfile), "--network-interface", "lo", "--gloo",
           sys.executable, str(REPO / "jobs" / "train.py"), "--data", str(image_dataset), "--output",
           str(tmp_path / "m"), "--epochs", "1", "--batch-size", "8", "--no-progress"]
    done = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["hosts"] == 2
    assert "2 ranks on 2 hosts" in done.stdout + done.stderr


@pytest.mark.slow  # a whole run end to end: make test-slow
def test_training_launched_on_spark_matches_horovodrun(image_dataset, tmp_path):
    """--launcher spark runs the same loop as Horovod ranks inside Spark tasks (horovod.spark.run); with one reader
    thread per rank the data order is fixed, so both launchers train the same model: here a user's model from an
    import path, which the Spark tasks build from the config they are sent."""
    common = ["--data", str(image_dataset), "--epochs", "2", "--batch-size", "8", "--no-progress",
              "--loader-workers", "1", "--model", "tests.training.custom_model:build"]
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}  # the user's module, importable in the Spark tasks
    horovodrun([str(REPO / "jobs" / "train.py"), "--output", str(tmp_path / "hvd"), *common], tmp_path, env=env)
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--launcher", "spark", "--master",
                           "local[2]", "--num-proc", "2", "--output", str(tmp_path / "spark"), *common],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    by_hvd, by_spark = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("hvd", "spark"))
    assert by_spark["world_size"] == by_hvd["world_size"] == 2
    assert by_spark["model"] == by_hvd["model"] == "tests.training.custom_model:build"
    for a, b in zip(by_hvd["history"], by_spark["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert by_spark["test_loss"] == pytest.approx(by_hvd["test_loss"], rel=1e-4)
