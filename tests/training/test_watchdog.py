"""The watchdog: which rank it names as stuck, and a real hang (a collate hook that sleeps) ended within the budget
with hang.json, every rank's stacks and exit code 5: one process here, two under horovodrun and torchrun."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from core.errors import EXIT_HUNG
from tests.conftest import REPO, subprocess_env, tool
from tests.training.inmemory import config, image_source
from training.distributed import SingleProcess
from training.wiring import build_trainer
from training.watchdog import Heartbeat, Watchdog, stuck_ranks

BUDGET = 3  # seconds without progress before the watchdog fires


def beat(step, phase, part="train", epoch=0):
    return {"epoch": epoch, "part": part, "step": step, "phase": phase}


def test_the_stuck_rank_is_the_one_the_others_wait_for_in_a_collective():
    # Horovod: rank 0 waits in the gradient allreduce, rank 1 never got past its batch
    assert stuck_ranks({0: beat(5, "collective"), 1: beat(5, "compute")}) == [1]
    # DDP: the allreduce runs inside backward, so the waiting rank is in backward, the stuck one before it
    assert stuck_ranks({0: beat(5, "backward"), 1: beat(5, "compute"), 2: beat(5, "backward")}) == [1]
    # waiting for data at an earlier step than the others
    assert stuck_ranks({0: beat(7, "collective"), 1: beat(6, "loading"), 2: beat(7, "collective")}) == [1]
    # a later part of the run is further on, whatever the step
    assert stuck_ranks({0: beat(2, "compute", part="validation"), 1: beat(40, "compute")}) == [1]
    # all waiting in a collective (a mismatched call, a network fault): all named; a silent rank first
    assert stuck_ranks({0: beat(3, "collective"), 1: beat(3, "collective")}) == [0, 1]
    assert stuck_ranks({0: beat(3, "collective"), 1: None}) == [1]


def test_a_heartbeat_names_the_loaders_position_only_while_loading():
    position = {"split": "train", "batch": 3, "row_groups": [["/data/part-0.parquet", 2]]}
    heartbeat = Heartbeat(position=lambda: position)
    heartbeat.enter("train", epoch=1)
    heartbeat.set("loading", 4)
    assert heartbeat.snapshot() == {**beat(4, "loading", epoch=1), "loader": position}
    heartbeat.set("compute")
    assert heartbeat.snapshot() == beat(4, "compute", epoch=1)


def test_no_watchdog_thread_when_it_is_off(tmp_path):
    watchdog = Watchdog(SingleProcess("cpu"), Heartbeat(), seconds=0, output_dir=tmp_path).start()
    assert watchdog._thread is None
    watchdog.stop()


def test_a_hang_in_one_process_ends_with_hang_json_stacks_and_exit_5(tmp_path, monkeypatch):
    """The watchdog's exit is replaced by one that only records the code, so the test process lives on."""
    monkeypatch.setenv("HANG_FROM", "4")
    exits = []
    monkeypatch.setattr("training.watchdog._end", exits.append)
    trainer = build_trainer(config("train.epochs=1", f"train.watchdog_seconds={BUDGET}",
                                   "train.collate=tests.training.hang_hooks:sleepy"), image_source(), tmp_path,
                            SingleProcess("cpu"))
    monkeypatch.setattr("tests.training.hang_hooks.pause", lambda: _wait_for(exits, BUDGET + 30))
    broken = logging.StreamHandler(open(tmp_path / "gone.log", "w"))
    broken.stream.close()  # a log handler whose stream has gone (seen in a long test session): it must not matter
    monkeypatch.setattr(logging.getLogger(), "handlers", [*logging.getLogger().handlers, broken])
    monkeypatch.setattr(logging, "raiseExceptions", False)
    started = time.monotonic()
    trainer.fit()  # the hook "sleeps" until the watchdog has exited, then training ends normally
    assert exits == [EXIT_HUNG] and time.monotonic() - started < BUDGET + 30
    report = json.loads((tmp_path / "hang.json").read_text())
    assert report["stuck_ranks"] == [0] and report["exit_code"] == EXIT_HUNG
    (rank,) = report["ranks"]
    assert (rank["part"], rank["step"], rank["phase"]) == ("train", 4, "compute")  # the 4th step, its hook
    assert BUDGET <= rank["idle_s"] < BUDGET + 30
    assert "in sleepy" in (tmp_path / "hang-stacks" / "rank0.txt").read_text()


def _wait_for(exits: list, seconds: float) -> None:
    """The hook's stand-in for a hang: wait until the watchdog has ended the run (or fail the run, not wait on)."""
    deadline = time.monotonic() + seconds
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    if not exits:
        raise AssertionError(f"the watchdog did not fire within {seconds}s")


@pytest.mark.horovod
@pytest.mark.spark
@pytest.mark.parametrize("launcher", ["horovodrun", "torchrun"])
def test_a_rank_stuck_under_a_launcher_is_named_and_every_rank_exits_5(launcher, image_dataset, tmp_path):
    """Rank 1's collate hook sleeps from its 5th step: rank 0 waits for it in a collective (Horovod's allreduce over
    Gloo, DDP's inside backward). The run ends within the budget plus 30 s, not at Gloo's 30-minute timeout."""
    train = [sys.executable, str(REPO / "jobs" / "train.py"), "--data", str(image_dataset), "--output",
             str(tmp_path / "m"), "--epochs", "2", "--batch-size", "4", "--no-progress", "--loader-workers", "1",
             "--set", f"train.watchdog_seconds={BUDGET}", "--set", "train.collate=tests.training.hang_hooks:sleepy"]
    cmd = ([tool("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", *train] if launcher == "horovodrun" else
           [tool("torchrun"), "--nproc_per_node", "2", *train[1:], "--backend", "torch"])
    env = {**subprocess_env(), "PYTHONPATH": str(REPO), "HANG_RANK": "1", "HANG_FROM": "5"}
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    # the launchers report the ranks' own exit code
    assert ("Exit code: 5" if launcher == "horovodrun" else "exitcode  : 5") in output, output[-3000:]
    assert output.count("watchdog: no rank made progress") == 1  # one line, from rank 0
    report = json.loads((tmp_path / "m" / "hang.json").read_text())
    assert report["stuck_ranks"] == [1]
    ranks = {r["rank"]: r for r in report["ranks"]}
    assert (ranks[1]["part"], ranks[1]["step"], ranks[1]["phase"]) == ("train", 5, "compute")
    assert ranks[0]["phase"] == ("collective" if launcher == "horovodrun" else "backward")
    assert BUDGET <= ranks[1]["idle_s"] < BUDGET + 30
    assert "stuck rank 1 at epoch 1 train step 5" in output
    assert "in sleepy" in (tmp_path / "m" / "hang-stacks" / "rank1.txt").read_text()
    assert (tmp_path / "m" / "hang-stacks" / "rank0.txt").is_file()
    assert took < 120, f"{launcher} took {took:.0f}s"
