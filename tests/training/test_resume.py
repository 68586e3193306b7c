"""Resume points: a run killed with SIGKILL mid-epoch continues to the same weights; altered, foreign or mismatched
checkpoints are refused with errors that name the file and the reason. The checks of the trainer itself run on
in-memory datasets; the train job's exits and snapshots on Spark-written ones."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from core.config import load_section
from core.errors import CheckpointError
from tests.conftest import REPO, subprocess_env
from tests.training import inmemory
from training import checkpoint, digests
from training.config import TrainConfig
from training.distributed import SingleProcess
from training.wiring import build_trainer, fit

IMAGES, TEXTS = inmemory.image_source(), inmemory.sequence_source()


def config(*overrides: str) -> TrainConfig:
    return load_section("train", TrainConfig, overrides=["train.epochs=1", "train.batch_size=16",
                                                        "train.progress_bar=never", "train.loader_workers=1",
                                                        *overrides])


def train_in_memory(config: TrainConfig, source, output_dir):
    return build_trainer(config, source, output_dir, SingleProcess()).fit()


def run_train_job(*args: str, **popen) -> subprocess.Popen:
    # the default loader (auto: a worker process per core): the epoch's order does not depend on the workers
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / "train.py"), "--backend", "single", "--no-progress",
                             *args], env=subprocess_env(), **popen)


@pytest.mark.spark
def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(image_dataset, tmp_path):
    common = ["--data", str(image_dataset), "--epochs", "2", "--batch-size", "8", "--checkpoint-every-steps", "2"]
    whole = run_train_job(*common, "--output", str(tmp_path / "whole"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()[-3000:]

    killed = run_train_job(*common, "--output", str(tmp_path / "killed"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    points = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(points.glob("step-000000004-e0.json")):  # optimizer step 4 of epoch 1: mid-epoch
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before its 4th step"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()

    # resumed with another number of loader workers: the order of the epoch is the same
    resumed = run_train_job(*common, "--output", str(tmp_path / "killed"), "--loader-workers", "1",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = resumed.stderr.read().decode()
    assert resumed.wait(timeout=300) == 0, log[-3000:]
    assert "resuming from" in log and "epoch 1, batch" in log
    a, b = (checkpoint.load(tmp_path / d / "checkpoint.pt")["model_state"] for d in ("whole", "killed"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    histories = [json.loads((tmp_path / d / "metrics.json").read_text())["history"] for d in ("whole", "killed")]
    for before, after in zip(*histories):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-5)
        assert after["train_rows"] == before["train_rows"]
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    # every step's rows, as each run logged them: the resumed run's digests after its resume point are the
    # uninterrupted run's (the killed run's lines for steps it ran past the point are replaced by the rerun's)
    whole_digests, killed_digests = (digests.read(tmp_path / d) for d in ("whole", "killed"))
    steps_per_epoch = max(step for (_, epoch, step) in whole_digests if epoch == 1)
    assert len(whole_digests) == 2 * steps_per_epoch >= 8
    assert killed_digests == whole_digests


def test_a_finished_run_continues_when_given_more_epochs(tmp_path):
    train_in_memory(config(), IMAGES, tmp_path)
    metrics = train_in_memory(config("train.epochs=2"), IMAGES, tmp_path).metrics
    assert metrics["resumed_from"] and [h["epoch"] for h in metrics["history"]] == [1, 2]
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        train_in_memory(config("train.resume=require"), IMAGES, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # a run refused before it wrote anything leaves no folder (lock and all)


def test_resuming_on_another_dataset_or_with_another_batch_size_is_refused(tmp_path):
    train_in_memory(config(), IMAGES, tmp_path)
    with pytest.raises(CheckpointError, match=r"trained on dataset snapshot .* refusing to resume on other data"):
        train_in_memory(config("train.epochs=2"), TEXTS, tmp_path)
    with pytest.raises(CheckpointError, match=r"train\.batch_size=16, this run has 8"):
        train_in_memory(config("train.epochs=2", "train.batch_size=8"), IMAGES, tmp_path)
    fresh = train_in_memory(config("train.epochs=2", "train.resume=never", "train.batch_size=8"), TEXTS,
                            tmp_path).metrics
    assert fresh["resumed_from"] is None and len(fresh["history"]) == 2
    points = checkpoint.resume_points(tmp_path)  # only the new run's: the old ones cannot be picked up by mistake
    assert points and all(checkpoint.load(p)["dataset"]["snapshot_id"] == fresh["snapshot_id"] for p in points)


def test_an_altered_checkpoint_is_refused_before_it_is_unpickled(tmp_path):
    train_in_memory(config(), IMAGES, tmp_path)
    point = checkpoint.latest_resume_point(tmp_path)
    data = bytearray(point.read_bytes())
    data[len(data) // 2] ^= 0xFF
    point.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{point.name} does not match the SHA-256"):
        train_in_memory(config("train.epochs=2"), IMAGES, tmp_path)
    final = tmp_path / "checkpoint.pt"
    final.write_bytes(final.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="altered or truncated"):
        checkpoint.load(final)


class NotWeights:
    """Pickled as a class reference: loading it would import and run code."""


def _sign(path) -> None:
    """Write a correct sidecar, so only the payload itself decides."""
    import hashlib

    data = path.read_bytes()
    checkpoint.sidecar_of(path).write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest()}))


def test_foreign_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    _sign(plain)
    with pytest.raises(CheckpointError, match="is not a bigtrain checkpoint"):
        checkpoint.load(plain)
    code = tmp_path / "code.pt"
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "x": NotWeights()}, code)
    _sign(code)
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely \(weights_only=True\)"):
        checkpoint.load(code)
    unsigned = tmp_path / "unsigned.pt"
    torch.save({"format": checkpoint.FORMAT}, unsigned)
    with pytest.raises(CheckpointError, match="has no unsigned.json beside it"):
        checkpoint.load(unsigned)


@pytest.mark.spark
def test_train_job_exits_1_naming_an_altered_checkpoint(image_dataset, tmp_path):
    fit(config(), data_url=str(image_dataset), output_dir=tmp_path, dist=SingleProcess())
    point = checkpoint.latest_resume_point(tmp_path)
    point.write_bytes(point.read_bytes() + b"x")
    job = run_train_job("--data", str(image_dataset), "--output", str(tmp_path), "--epochs", "2",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = job.communicate(timeout=300)
    assert job.returncode == 1
    assert f"error: checkpoint {point} does not match the SHA-256" in err.decode()


@pytest.mark.spark
def test_resume_is_refused_once_the_dataset_has_a_new_snapshot_but_works_pinned_to_the_old_one(spark, tmp_path):
    from tests.jobs.test_snapshots import sequences, write_partition

    src, ds, out = tmp_path / "raw", tmp_path / "ds", tmp_path / "model"
    write_partition(src, "date=2026-11-27", 40)
    first = sequences(spark, src, ds)
    small = ["train.batch_size=8", "train.rnn.hidden=8", "train.rnn.embed_dim=8"]
    trained = fit(config(*small), data_url=str(ds), output_dir=out, dist=SingleProcess()).metrics
    assert trained["snapshot_id"] == first["snapshot"]
    assert checkpoint.load(out / "checkpoint.pt")["dataset"]["snapshot_id"] == first["snapshot"]

    write_partition(src, "date=2026-11-28", 20, start=40)
    second = sequences(spark, src, ds)
    assert second["snapshot"] != first["snapshot"]
    with pytest.raises(CheckpointError, match=rf"snapshot {first['snapshot']} .* but --data is snapshot "
                                              rf"{second['snapshot']}"):
        fit(config(*small, "train.epochs=2"), data_url=str(ds), output_dir=out, dist=SingleProcess())
    pinned = ds / "snapshots" / first["snapshot"]
    resumed = fit(config(*small, "train.epochs=2"), data_url=str(pinned), output_dir=out,
                    dist=SingleProcess()).metrics
    assert resumed["resumed_from"] and len(resumed["history"]) == 2


@pytest.mark.spark
def test_two_runs_into_one_output_folder_are_refused(image_dataset, tmp_path):
    from core.locking import LockHeld, hold

    with hold(str(tmp_path / ".bigtrain-train.lock"), what="another training run"):
        with pytest.raises(LockHeld, match=f"training into {tmp_path} is already running"):
            fit(config(), data_url=str(image_dataset), output_dir=tmp_path, dist=SingleProcess())
        job = run_train_job("--data", str(image_dataset), "--output", str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        _, err = job.communicate(timeout=300)
        assert job.returncode == 75 and "is already running" in err.decode()
    assert not (tmp_path / "checkpoints").exists()


def test_rerunning_a_finished_run_says_it_is_complete(tmp_path, caplog):
    import logging

    train_in_memory(config(), IMAGES, tmp_path)
    with caplog.at_level(logging.INFO, logger="bigtrain.train"):
        metrics = train_in_memory(config(), IMAGES, tmp_path).metrics
    assert "is complete (1 epochs" in caplog.text and len(metrics["history"]) == 1


def test_a_resume_point_cut_short_by_a_kill_is_named_when_the_run_continues_from_the_one_before(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from training import resume

    points = tmp_path / "checkpoints"
    points.mkdir()
    (points / "step-000000090-e15.pt").write_bytes(b"x")
    (points / "step-000000090-e15.json").write_text("{}")
    (points / "step-000000092-e15.pt").write_bytes(b"half")  # no sidecar: killed between the two writes
    with caplog.at_level(logging.WARNING, logger="bigtrain.train"):
        found = resume.find_point(SimpleNamespace(resume="auto"), tmp_path)
    assert found == points / "step-000000090-e15.pt"
    assert ("ignoring step-000000092-e15.pt: no sidecar, its save was cut short (a crash or a kill during the "
            "write); continuing from step-000000090-e15.pt") in caplog.text
