"""Early stopping: when an epoch counts as an improvement (a margin relative to the best loss, an absolute one, or
both), the old key's name, and the lines a run logs about the weights it keeps. No training: ``update_best`` is
driven with the validation losses of made-up epochs."""
from __future__ import annotations

import logging
import math

import pytest

from core.config import load_section
from core.errors import ConfigError
from tests.training.inmemory import config, image_source
from training.config import TrainConfig
from training.distributed import SingleProcess
from training.wiring import build_trainer
from training.resume import Progress
from training.trainer import describe_kept, describe_stop, update_best


def run_epochs(cfg: TrainConfig, losses: list[float]) -> tuple[Progress, list[bool]]:
    """``update_best`` over one made-up epoch per loss, as the trainer calls it at each epoch end; stops where the
    trainer would."""
    progress, improved = Progress(), []
    for epoch, loss in enumerate(losses, start=1):
        if progress.stopped_early:
            break
        improved.append(update_best(progress, {"epoch": epoch, "val_loss": loss}, cfg))
    return progress, improved


def test_a_loss_going_from_0_0009_to_0_0001_keeps_the_later_epoch():
    # each step is smaller than 0.001: an absolute margin of 0.001 would keep epoch 2 and stop after epoch 5
    losses = [0.002, 0.0009, 0.0008, 0.0006, 0.0004, 0.0002, 0.0001]
    cfg = config()  # the defaults of conf/bigtrain.yaml
    progress, improved = run_epochs(cfg, losses)
    assert improved == [True] * 7
    assert (progress.best_epoch, progress.best_val_loss, progress.stopped_early) == (7, 0.0001, False)
    assert (cfg.early_stopping_patience, cfg.early_stopping_min_delta_relative,
            cfg.early_stopping_min_delta_absolute, cfg.early_stopping_min_delta) == (3, 0.001, 0.0, None)


def test_a_gain_smaller_than_the_relative_margin_does_not_count_and_patience_runs_out():
    cfg = config("train.early_stopping_min_delta_relative=0.01", "train.early_stopping_patience=2")
    progress, improved = run_epochs(cfg, [0.5, 0.496, 0.4951, 0.1])  # 0.8% and 0.98% below 0.5: not 1%
    assert improved == [True, False, False] and progress.stopped_early
    assert (progress.best_epoch, progress.best_val_loss) == (1, 0.5)


def test_an_improvement_must_beat_both_margins():
    cfg = config("train.early_stopping_min_delta_relative=0.01", "train.early_stopping_min_delta_absolute=0.05",
                 "train.early_stopping_patience=0")
    assert cfg.early_stopping_margin(10.0) == pytest.approx(0.1)   # the relative one is the larger
    assert cfg.early_stopping_margin(1.0) == pytest.approx(0.05)   # the absolute one is the larger
    _, improved = run_epochs(cfg, [10.0, 9.95, 9.89, 0.99, 0.95, 0.93])
    # 9.95: 0.05 below, under 0.1 | 9.89: 0.11 | 0.99: far | 0.95: 0.04, under 0.05 | 0.93: 0.06
    assert improved == [True, False, True, True, False, True]


def test_the_relative_margin_is_a_share_of_the_size_of_a_negative_loss():
    cfg = config("train.early_stopping_min_delta_relative=0.01", "train.early_stopping_patience=0")
    _, improved = run_epochs(cfg, [-2.0, -2.01, -2.03])  # a user's loss may be negative: margin 0.02, not -0.02
    assert improved == [True, False, True]


def test_a_loss_that_is_not_finite_never_improves():
    cfg = config("train.early_stopping_patience=2")
    progress, improved = run_epochs(cfg, [math.nan, math.inf, 0.3])
    assert improved == [False, False] and progress.stopped_early and progress.best_epoch is None
    assert describe_stop(progress, cfg) == "early stopping: no finite validation loss in 2 epochs"


def test_the_stop_line_names_the_best_epoch_its_loss_and_the_margins():
    cfg = config("train.early_stopping_patience=1", "train.early_stopping_min_delta_absolute=0.0002")
    progress, _ = run_epochs(cfg, [0.0009, 0.00085])
    assert describe_stop(progress, cfg) == ("early stopping: validation loss has not improved on epoch 1's 0.0009 by "
                                            "more than 0.1% of it and 0.0002 for 1 epoch")


@pytest.mark.parametrize("key, value", [("early_stopping_min_delta_relative", 1.0),
                                        ("early_stopping_min_delta_relative", -0.1),
                                        ("early_stopping_min_delta_absolute", -0.001),
                                        ("early_stopping_min_delta", -0.001)])
def test_a_bad_margin_is_refused_naming_its_key(key, value):
    with pytest.raises(ConfigError, match=rf"config key train\.{key}\b.*got {value}"):
        config(f"train.{key}={value}")


def test_the_old_key_early_stopping_min_delta_still_reads_as_the_absolute_margin(tmp_path):
    cfg = config("train.early_stopping_min_delta=0.5")
    assert cfg.early_stopping_absolute_margin == 0.5 and cfg.early_stopping_margin(0.0009) == 0.5
    assert config("train.early_stopping_min_delta=0.5", "train.early_stopping_min_delta_absolute=0.5") \
        .early_stopping_absolute_margin == 0.5
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  early_stopping_min_delta: 0.25\n")
    assert load_section("train", TrainConfig, config_file=str(user)).early_stopping_absolute_margin == 0.25


def test_the_old_key_and_the_new_one_with_different_values_are_refused_naming_both():
    with pytest.raises(ConfigError, match=r"train\.early_stopping_min_delta: is the old name of "
                                          r"train\.early_stopping_min_delta_absolute; set only that one"):
        config("train.early_stopping_min_delta=0.5", "train.early_stopping_min_delta_absolute=0.2")


def test_a_run_with_the_old_key_says_what_it_means(tmp_path, caplog):
    cfg = config("train.early_stopping_min_delta=0.001", "train.cnn.conv_channels=[2,2]", "train.cnn.hidden=4")
    with caplog.at_level(logging.WARNING, logger="bigtrain.train"):
        build_trainer(cfg, image_source((16, 16, 16)), tmp_path, SingleProcess()).fit()
    assert ("train.early_stopping_min_delta (0.001) is the old name of train.early_stopping_min_delta_absolute"
            in caplog.text)


def test_the_kept_weights_line_names_their_loss_and_a_lower_one_that_did_not_count():
    lowest = {"kept_val_loss": 0.0001, "lowest_val_loss": 0.0001, "lowest_val_loss_epoch": 60}
    assert describe_kept(60, lowest, 63) == ("keeping the weights of epoch 60 (validation loss 0.0001, the lowest), "
                                             "not those of the last epoch 63")
    below_margin = {"kept_val_loss": 0.5, "lowest_val_loss": 0.49981, "lowest_val_loss_epoch": 22}
    assert describe_kept(21, below_margin, 25) == (
        "keeping the weights of epoch 21 (validation loss 0.5; epoch 22's 0.4998 was lower by less than the "
        "early-stopping margins), not those of the last epoch 25")
