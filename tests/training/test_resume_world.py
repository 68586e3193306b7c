"""A run stopped mid-epoch at one world size and resumed at another (2 ranks to 1 under horovodrun, 1 to 2 under
torchrun): the stopped epoch trains every row of the train split exactly once, read back from what the ranks logged
(each step's digest, rebuilt and checked by `bigtrain batches --check`, against the split's ids read with pyarrow),
with equal steps on every rank of each world; the next epoch is the plain order of the new world size."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, subprocess_env, tool
from training import digests

pytestmark = [pytest.mark.horovod, pytest.mark.spark, pytest.mark.slow]  # whole launcher runs: make test-slow
TRAIN = str(REPO / "jobs" / "train.py")
EVERY = 2  # a resume point every 2 optimizer steps


def common(dataset: Path, output: Path) -> list[str]:
    return [TRAIN, "--data", str(dataset), "--output", str(output), "--epochs", "2", "--batch-size", "8",
            "--no-progress", "--checkpoint-every-steps", str(EVERY), "--set",
            "train.collate=tests.training.stop_hooks:stop_at", "--set", "train.early_stopping_patience=0",
            "--set", "train.keep_checkpoints=5"]


def launch(cmd: list[str], cwd: Path, *, stop_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}  # the stop hook, importable in every rank
    if stop_at is not None:
        env["STOP_AT"] = str(stop_at)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def horovodrun(ranks: int) -> list[str]:
    return [tool("horovodrun"), "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo", sys.executable]


def stopped(done: subprocess.CompletedProcess, output: Path) -> int:
    """The step of the epoch the stopped run's newest resume point is at (it stopped after it, mid-epoch)."""
    assert done.returncode != 0, "the run was not stopped"
    assert not (output / "checkpoint.pt").exists()
    newest = sorted((output / "checkpoints").glob("step-*-e0.json"))[-1]
    return json.loads(newest.read_text())["step"]


def trained_rows(cli, run: Path, epoch: int, lines: dict) -> tuple[list[int], list[int], dict[int, int]]:
    """(the real rows, the padding rows, steps per rank) of epoch ``epoch``'s logged steps ``lines``
    ((rank, step) -> world), each batch rebuilt by `bigtrain batches` and checked against its logged digest."""
    real, padding, steps = [], [], Counter()
    for (rank, step), world in sorted(lines.items()):
        code, out, err = cli("batches", "--run", str(run), "--epoch", str(epoch), "--step", str(step), "--rank",
                             str(rank), "--check", "--json")
        assert code == 0, f"rank {rank} step {step}: {err}"
        found = json.loads(out.split("\nbatches: check ok")[0])
        assert found["world"] == world and found["logged"] == found["digest"]
        ids = [row["sample_id"] for row in found["rows"]]
        real += ids[:found["real"]]
        padding += ids[found["real"]:]
        steps[rank] += 1
    return real, padding, dict(steps)


def check_resumed_run(cli, dataset: Path, run: Path, old: int, new: int, stop: int) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == new and [h["epoch"] for h in metrics["history"]] == [1, 2]
    first, second = metrics["history"]
    (was, at), (now, end) = first["stretches"]  # what the resume point recorded, and where the epoch ended
    assert (was, at, now) == (old, stop, new) and "stretches" not in second
    assert first["train_rows"] == second["train_rows"] == metrics["train_rows"]
    logged = digests.read(run)
    # the steps that count: up to the resume point at the old world size, after it at the new one (the stopped run
    # logged a step or more past its resume point; those lines are of a world size that did not go on)
    before = {(r, s): w for (r, e, s), (w, _) in logged.items() if e == 1 and s <= stop and w == old}
    after = {(r, s): w for (r, e, s), (w, _) in logged.items() if e == 1 and s > stop and w == new}
    assert {r for r, _ in before} == set(range(old)) and {r for r, _ in after} == set(range(new))
    real_before, padding_before, steps_before = trained_rows(cli, run, 1, before)
    real_after, padding_after, steps_after = trained_rows(cli, run, 1, after)
    assert set(steps_before.values()) == {stop}
    assert set(steps_after.values()) == {end - stop}  # equal steps on every new rank, to the epoch's last step
    train_ids = pq.read_table(dataset / "train", columns=["sample_id"]).column("sample_id").to_pylist()
    assert sorted(real_before + real_after) == sorted(train_ids)  # every row of the split, exactly once
    assert set(padding_before + padding_after) <= set(train_ids)
    # the next epoch: the new world size's plain order, every step of every rank rebuilt to its logged digest
    second_epoch = {(r, s): w for (r, e, s), (w, _) in logged.items() if e == 2}
    real, _, steps = trained_rows(cli, run, 2, second_epoch)
    assert set(steps) == set(range(new)) and len(set(steps.values())) == 1
    assert sorted(real) == sorted(train_ids)
    # a step after the change asked at the old world size is refused, naming the epoch's stretches
    code, _, err = cli("batches", "--run", str(run), "--epoch", "1", "--step", str(stop + 1), "--world", str(old))
    assert code == 2 and f"ran on {new} rank" in err and f"steps 1-{stop} on {old}, steps {stop + 1}-{end} on {new}" in err


def test_two_ranks_stopped_mid_epoch_resume_on_one_under_horovodrun(image_dataset, cli, tmp_path):
    output = tmp_path / "m"
    done = launch([*horovodrun(2), *common(image_dataset, output)], tmp_path, stop_at=6)
    stop = stopped(done, output)
    assert stop == 4  # steps 1-5 ran, the resume point of step 4 is the newest
    done = launch([*horovodrun(1), *common(image_dataset, output)], tmp_path)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "world size changed from 2 to 1 at step 4 of epoch 1" in done.stdout + done.stderr
    check_resumed_run(cli, image_dataset, output, 2, 1, stop)


def test_one_rank_stopped_mid_epoch_resumes_on_two_under_torchrun(image_dataset, cli, tmp_path):
    output = tmp_path / "m"
    done = launch([sys.executable, *common(image_dataset, output), "--backend", "single"], tmp_path, stop_at=8)
    stop = stopped(done, output)
    assert stop == 6
    done = launch([tool("torchrun"), "--nproc_per_node", "2", *common(image_dataset, output), "--backend", "torch"],
                  tmp_path)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "world size changed from 1 to 2 at step 6 of epoch 1" in done.stdout + done.stderr
    check_resumed_run(cli, image_dataset, output, 1, 2, stop)
