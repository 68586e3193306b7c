"""The second backend (PyTorch DDP under torchrun) and elastic Horovod, with real processes talking over Gloo."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, second_host_name, subprocess_env, tool

pytestmark = [pytest.mark.horovod, pytest.mark.spark]
TRAIN = str(REPO / "jobs" / "train.py")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def test_torch_backend_under_torchrun_matches_horovodrun(image_dataset, tmp_path):
    """Same flags, same outputs; with one reader thread per rank both engines see the same batches, so the two
    data-parallel runs train the same model. Not bit for bit: Horovod sums gradients then divides, DDP divides then
    sums, and the rounding differences grow a little with every step."""
    common = ["--data", str(image_dataset), "--epochs", "2", "--batch-size", "8", "--no-progress",
              "--loader-workers", "1"]
    done = run([tool("torchrun"), "--nproc_per_node", "2", TRAIN, "--backend", "torch", "--output",
                str(tmp_path / "ddp"), *common], tmp_path)
    run([tool("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, TRAIN, "--output",
         str(tmp_path / "hvd"), *common], tmp_path)
    assert done.stdout.count("train: test accuracy") == 1  # rank 0 reports, rank 1 does not
    ddp, hvd = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("ddp", "hvd"))
    assert (ddp["backend"], ddp["world_size"], hvd["backend"]) == ("torch", 2, "horovod")
    assert ddp["test_rows"] == hvd["test_rows"] > 0
    for a, b in zip(hvd["history"], ddp["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-3)
    assert ddp["test_loss"] == pytest.approx(hvd["test_loss"], rel=2e-3)
    for name in ("checkpoint.pt", "checkpoint.json", "metrics.jsonl", "evaluation.json", "confusion_matrix.png"):
        assert (tmp_path / "ddp" / name).is_file(), name


@pytest.mark.slow  # a whole run end to end: make test-slow
def test_torch_backend_launched_on_spark_by_torch_distributor(image_dataset, tmp_path):
    """--launcher spark --backend torch: Spark's TorchDistributor starts the DDP ranks in barrier tasks (no Horovod
    involved); the run equals the same run under torchrun. The model is a user's, from an import path."""
    common = ["--data", str(image_dataset), "--epochs", "1", "--batch-size", "8", "--no-progress",
              "--loader-workers", "1", "--backend", "torch", "--model", "tests.training.custom_model:build"]
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}  # the user's module, importable in the Spark tasks
    run([sys.executable, TRAIN, "--launcher", "spark", "--master", "local[2]", "--num-proc", "2", "--output",
         str(tmp_path / "spark"), *common], tmp_path, env)
    run([tool("torchrun"), "--nproc_per_node", "2", TRAIN, "--output", str(tmp_path / "torchrun"), *common], tmp_path,
        env)
    by_spark, by_torchrun = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("spark", "torchrun"))
    assert by_spark["backend"] == "torch" and by_spark["world_size"] == 2
    assert by_spark["model"] == by_torchrun["model"] == "tests.training.custom_model:build"
    assert by_spark["history"][0]["train_loss"] == pytest.approx(by_torchrun["history"][0]["train_loss"], rel=1e-4)
    assert by_spark["test_loss"] == pytest.approx(by_torchrun["test_loss"], rel=1e-4)


def test_horovod_fp16_compression_changes_the_run_only_by_rounding(image_dataset, tmp_path):
    """With one reader thread per rank both runs see the same batches: float16 gradients on the wire give
    (slightly) different weights, and about the same losses."""
    common = ["--data", str(image_dataset), "--epochs", "1", "--batch-size", "8", "--no-progress",
              "--loader-workers", "1"]
    for name, extra in (("exact", []), ("fp16", ["--fp16-compression"])):
        run([tool("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, TRAIN, "--output",
             str(tmp_path / name), *common, *extra], tmp_path)
    from training import checkpoint

    exact, fp16 = (checkpoint.load(tmp_path / d / "checkpoint.pt") for d in ("exact", "fp16"))
    assert exact["config"]["fp16_compression"] is False and fp16["config"]["fp16_compression"] is True
    differences = [float((exact["model_state"][k] - fp16["model_state"][k]).abs().max()) for k in exact["model_state"]]
    assert 0 < max(differences) < 1e-2
    losses = [json.loads((tmp_path / d / "metrics.json").read_text())["history"][0]["train_loss"]
              for d in ("exact", "fp16")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_torch_backend_without_torchrun_says_how_to_launch(image_dataset, tmp_path):
    env = {k: v for k, v in subprocess_env().items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, TRAIN, "--backend", "torch", "--data", str(image_dataset), "--output",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "torchrun --nproc_per_node" in done.stderr and "Traceback" not in done.stderr


def _worker_pids(hostname: str) -> list[int]:
    """The training processes horovodrun started for ``hostname`` (Horovod puts it in their environment)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if TRAIN.encode() in cmdline and f"HOROVOD_HOSTNAME={hostname}".encode() in environ:
            found.append(int(pid))
    # not the loader's worker processes, forked from a training process (same command line and environment)
    return [pid for pid in found if _parent(pid) not in found]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.slow  # a whole run end to end: make test-slow
def test_elastic_run_survives_a_killed_worker(image_dataset, tmp_path):
    """Three workers on two host names (both this machine); the one on the second name is killed after the first
    epoch. Horovod drops that host, the two others roll back to the last commit and finish every epoch. The model
    is a user's, from an import path."""
    hostname = second_host_name()
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"localhost:2\n{hostname}:1\n")
    output = tmp_path / "m"
    cmd = [tool("horovodrun"), "-np", "3", "--min-np", "2", "--max-np", "3", "--host-discovery-script",
           str(REPO / "scripts" / "discover_hosts.sh"), "--network-interface", "lo", "--gloo", sys.executable, TRAIN,
           "--elastic", "--data", str(image_dataset), "--output", str(output), "--epochs", "3", "--batch-size", "8",
           "--no-progress", "--checkpoint-every-steps", "2", "--model", "tests.training.custom_model:build"]
    log = tmp_path / "log.txt"
    with open(log, "w") as sink:
        job = subprocess.Popen(cmd, cwd=tmp_path, env={**subprocess_env(), "BIGTRAIN_HOSTS_FILE": str(hosts), "PYTHONPATH": str(REPO)},
                               stdout=sink, stderr=subprocess.STDOUT)
        metrics_lines = output / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics_lines.is_file() and metrics_lines.read_text().strip()):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.1)
        victims = _worker_pids(hostname)
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "training goes on with 2 ranks" in text
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 3 and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["world_size"] == 2
    assert all(h["train_rows"] == metrics["train_rows"] for h in metrics["history"])  # re-sharded, nothing lost


def test_launch_mistakes_end_in_one_line_with_exit_2(image_dataset, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    done = subprocess.run([sys.executable, TRAIN, "--data", str(image_dataset), "--output", str(afile)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"--output {afile} is a file" in done.stderr
    env = {**subprocess_env(), "TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, TRAIN, "--backend", "horovod", "--data", str(image_dataset), "--output",
                           str(tmp_path / "m")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--backend horovod under torchrun" in done.stderr
    assert "Traceback" not in done.stderr
