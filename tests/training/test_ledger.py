"""The stage ledger: stages that add up to the epoch, one row per rank gathered into metrics.json, the slowest rank
and the stage it waited on, the stall budget (a warning, or exit code 4 after the epoch's resume point)."""
from __future__ import annotations

import json
import logging
import time

import pytest

from core.errors import EXIT_STALL, StallBudgetError
from tests.training.inmemory import Wrapped, config, image_source
from training import checkpoint
from training.distributed import SingleProcess
from training.ledger import LOADER_STAGES, TRAINER_STAGES, RankLedger, StageClock, describe, summary
from training.wiring import build_trainer


def rank(r, *, wall, wait=0.0, collective=0.0, read=0.0, decode=0.0, handover=0.0, workers=2):
    trainer = dict.fromkeys(TRAINER_STAGES, 0.0)
    trainer.update(wait=wait, collective=collective, compute=wall - wait - collective)
    loader = {**dict.fromkeys(LOADER_STAGES, 0.0), "read": read, "decode": decode, "handover": handover}
    return RankLedger(r, wall, 10, trainer, loader, workers)


def test_a_clock_accounts_for_every_moment_between_its_marks():
    clock = StageClock()
    time.sleep(0.01)
    clock.mark("wait")
    time.sleep(0.02)
    clock.mark("compute")
    assert clock.seconds["wait"] >= 0.01 and clock.seconds["compute"] >= 0.02
    assert sum(clock.seconds.values()) == pytest.approx(clock.elapsed, abs=1e-3)


def test_a_ranks_row_travels_as_floats_and_comes_back_the_same():
    mine = rank(1, wall=3.0, wait=0.6, collective=0.2, read=0.4, decode=2.0, handover=0.3)
    back = RankLedger.from_row(1, mine.row())
    assert back == mine
    assert back.data_stall == pytest.approx(0.6 / 3.0)
    assert back.bound == "decode"  # 2.0 worker-seconds over 2 workers: 1.0 s of wall clock, more than the rest
    with pytest.raises(ValueError, match="holds"):
        RankLedger.from_row(0, [0.0] * 3)


def test_the_hand_over_is_not_divided_over_the_workers():
    assert rank(0, wall=2.0, decode=1.0, handover=0.6, workers=4).bound == "handover"  # 0.6 s > 1.0 s / 4
    assert rank(0, wall=2.0).bound is None  # a source that does not time its stages (data held in memory)


def test_the_slowest_rank_is_the_one_the_others_waited_for():
    ranks = [rank(0, wall=3.0, collective=1.2), rank(1, wall=3.0, wait=0.9, decode=4.0),
             rank(2, wall=3.0, collective=1.0)]
    ledger = summary(ranks, shard_of=lambda r: {"rank": r})
    assert (ledger["slowest_rank"], ledger["bound"], ledger["slowest_shard"]) == (1, "decode", {"rank": 1})
    assert (ledger["most_stalled_rank"], ledger["max_data_stall"]) == (1, 0.3)
    assert describe(ledger) == "slowest rank 1 (3.00s): waits 30%, loader bound by decode (2 workers)"
    calm = summary([rank(0, wall=2.0, wait=0.02)])
    assert describe(calm) == "slowest rank 0 (2.00s): compute 99%"


class Slow(Wrapped):
    """Training batches that take ``seconds`` each to arrive: a loader the step waits for."""

    def __init__(self, inner, seconds: float):
        super().__init__(inner)
        self.seconds = seconds

    def training_batches(self, plan, **options):
        for batch in self.inner.training_batches(plan, **options):
            time.sleep(self.seconds)
            yield batch


def test_metrics_hold_each_epochs_ledger_adding_up_to_its_time(tmp_path):
    trainer = build_trainer(config("train.epochs=2"), Slow(image_source(), 0.01), tmp_path, SingleProcess("cpu"))
    history = trainer.fit().metrics["history"]
    for record in history:
        (mine,) = record["ledger"]["ranks"]
        total = sum(mine["trainer_s"].values())
        assert total == pytest.approx(mine["wall_s"], abs=1e-3)
        assert total == pytest.approx(record["seconds"], rel=0.05, abs=0.02)  # the epoch's own clock
        assert mine["trainer_s"]["wait"] >= 0.01 * (mine["steps"] - 1)  # every batch but the first waited 10 ms
        assert mine["trainer_s"]["evaluation"] > 0 and mine["trainer_s"]["compute"] > 0
        # the record's stall is over all ranks, summed before the epoch's last collective: close, not equal
        assert mine["data_stall"] == pytest.approx(record["data_stall"], abs=0.02)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert on_disk[-1]["ledger"]["ranks"][0]["steps"] == history[-1]["ledger"]["ranks"][0]["steps"] == 6
    assert (tmp_path / "stages.png").stat().st_size > 0


def test_a_stall_over_budget_warns_naming_the_rank(tmp_path, caplog):
    trainer = build_trainer(config("train.epochs=2", "train.max_data_stall=0.2"), Slow(image_source(), 0.05),
                            tmp_path, SingleProcess("cpu"))
    with caplog.at_level(logging.WARNING, logger="bigtrain.train"):
        trainer.fit()
    warnings = [r.getMessage() for r in caplog.records if "train.max_data_stall" in r.getMessage()]
    assert len(warnings) == 2 and warnings[0].startswith("epoch 1: rank 0 waited for data ")


def test_a_stall_over_budget_can_stop_the_run_resumably_with_exit_code_4(tmp_path):
    trainer = build_trainer(config("train.epochs=3", "train.max_data_stall=0.2", "train.stall_budget_action=fail"),
                            Slow(image_source(), 0.05), tmp_path, SingleProcess("cpu"))
    with pytest.raises(StallBudgetError, match=r"epoch 1: rank 0 waited for data .* over train\.max_data_stall "
                                               r"20\.0%") as raised:
        trainer.fit()
    assert raised.value.exit_code == EXIT_STALL == 4
    point = checkpoint.load(checkpoint.latest_resume_point(tmp_path))
    assert point["progress"]["epoch"] == 1  # the epoch that went over budget is saved: a resume goes on from it


def test_a_fraction_outside_0_1_is_refused_naming_the_key():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.max_data_stall"):
        config("train.max_data_stall=1.5")
