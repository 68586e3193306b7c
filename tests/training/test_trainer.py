"""The trainer on in-memory datasets (no Spark, no Petastorm): it learns, writes its reports and a checkpoint that
loads, resumes an interrupted run to the same weights, refuses a second run into its folder and an empty train
split, and checks that the source delivered every row; the in-memory source shards, shuffles and pads as the
Petastorm loader does."""
from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest
import torch

from core.errors import DatasetError, LockHeld
from core.locking import hold
from tests.training.inmemory import (
    Claiming,
    InterruptedAt,
    Pixels,
    Wrapped,
    config,
    image_source,
    sequence_source,
)
from training import checkpoint
from training.distributed import SingleProcess
from training.wiring import build_trainer
from training.shards import DataCoverageError, EpochCounter, plan_shard
from training.sources import InMemorySource
from training.trainer import Trainer


def train(cfg, source, output_dir):
    return build_trainer(cfg, source, output_dir, SingleProcess()).fit()


def test_training_in_memory_learns_and_writes_metrics_reports_and_a_checkpoint_that_loads(tmp_path):
    source = image_source()
    result = train(config("train.epochs=6", "train.lr=0.1"), source, tmp_path)
    history = result.metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert result.metrics["test_accuracy"] >= 0.9  # chance is 0.5: dark against bright images
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: written[k] for k in ("test_rows", "train_rows", "epochs_completed", "stopped_early", "world_size",
                                    "backend", "model", "optimizer", "dataset", "snapshot_id", "resumed_from")} == {
        "test_rows": 32, "train_rows": 96, "epochs_completed": 6, "stopped_early": False, "world_size": 1,
        "backend": "single", "model": "cnn", "optimizer": "sgd", "dataset": "memory", "snapshot_id": source.identity,
        "resumed_from": None}
    assert written["lr"] == pytest.approx(0.1) and written["config"]["epochs"] == 6
    assert sum(written["per_class_rows"].values()) == 32 and set(written["per_class_accuracy"]) == {"dark", "bright"}
    assert [h["train_rows"] for h in written["history"]] == [96] * 6
    assert all(h["padding_rows"] == 0 and h["val_accuracy"] is not None for h in written["history"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "evaluation.json").is_file() and (tmp_path / "tensorboard").is_dir()
    model, payload = checkpoint.load_model(tmp_path / "checkpoint.pt")
    assert payload["classes"] == ["dark", "bright"] and payload["class_to_index"] == {"dark": 0, "bright": 1}
    assert payload["dataset"]["kind"] == "image" and payload["dataset"]["image"]["size"] == 8
    assert payload["dataset"]["snapshot_id"] == source.identity and payload["global_step"] == 6 * 6
    images = torch.as_tensor(source.examples["test"].inputs[0][:5])
    torch.testing.assert_close(model(images), result.model.eval()(images))


def test_sequences_in_memory_learn_with_the_lstm(tmp_path):
    source = sequence_source()
    metrics = train(config("train.epochs=4", "train.lr=0.02", "train.model=lstm"), source, tmp_path).metrics
    assert metrics["model"] == "lstm" and metrics["optimizer"] == "adam"
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["test_accuracy"] >= 0.9 and metrics["test_rows"] == 32
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["model"] == "lstm" and saved["dataset"]["sequence"]["vocab_size"] == 20


def test_a_trainer_takes_its_own_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = Pixels()
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=0.05), image_source(), SingleProcess(),
                      config("train.epochs=3"), tmp_path, model_name="pixels")
    metrics = trainer.fit().metrics
    assert metrics["model"] == "pixels" and metrics["optimizer"] == "adam" and metrics["lr"] == 0.05
    assert metrics["test_accuracy"] >= 0.9
    assert checkpoint.load(tmp_path / "checkpoint.pt")["model"] == "pixels"


def test_a_run_interrupted_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    cfg = config("train.epochs=2", "train.batch_size=8", "train.checkpoint_every_steps=2", "train.cnn.dropout=0.25")
    source = image_source()
    whole = train(cfg, source, tmp_path / "whole")
    with pytest.raises(RuntimeError, match="interrupted in epoch 2 after 7 batches"):
        train(cfg, InterruptedAt(source, epoch=1, after=7), tmp_path / "cut")
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    assert checkpoint.latest_resume_point(tmp_path / "cut").name == "step-000000018-e1.pt"  # 12 steps + 6 of epoch 2
    resumed = train(cfg, source, tmp_path / "cut")
    assert resumed.metrics["resumed_from"].endswith("step-000000018-e1.pt")
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
    for before, after in zip(whole.metrics["history"], resumed.metrics["history"], strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-6)
        assert after["train_rows"] == before["train_rows"] == 96
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_two_runs_into_one_output_folder_are_refused(tmp_path):
    with hold(str(tmp_path / ".bigtrain-train.lock"), what="another training run"):
        with pytest.raises(LockHeld, match=f"training into {tmp_path} is already running"):
            train(config(), image_source(), tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


def test_an_empty_train_split_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="split memory/train is empty: nothing to train on"):
        train(config(), image_source((0, 32, 32)), tmp_path)


def test_a_train_split_of_one_class_is_refused_unless_allow_single_class(tmp_path):
    images = np.zeros((8, 1, 8, 8), np.uint8)
    ones = np.ones(8, np.int64)  # every row bright; dark is a class of the dataset with no row
    source = InMemorySource.images({"train": (images, ones), "test": (images, ones % 2)}, classes=["dark", "bright"])
    with pytest.raises(DatasetError) as refused:
        build_trainer(config(), source, tmp_path, SingleProcess())
    assert str(refused.value) == ("memory: every row of the train split is of one class, bright (of 2 in the "
                                  "dataset): a model of one class learns nothing; set train.allow_single_class: true "
                                  "to train on it anyway")
    assert not any(tmp_path.iterdir())  # refused before anything was written
    result = train(config("train.allow_single_class=true"), source, tmp_path)
    assert result.metrics["train_rows"] == 8


def test_an_empty_test_split_gives_null_test_metrics_not_zero(tmp_path):
    metrics = train(config(), image_source((96, 32, 0)), tmp_path).metrics
    assert metrics["test_rows"] == 0 and metrics["test_accuracy"] is None and metrics["test_loss"] is None
    assert not (tmp_path / "evaluation.json").exists()


def test_a_source_that_delivers_fewer_rows_than_it_claims_is_a_coverage_error(tmp_path):
    with pytest.raises(DataCoverageError, match="epoch 1: the ranks read 96 distinct rows of memory/train, the "
                                                "split holds 99"):
        train(config(), Claiming(image_source(), "train", 3), tmp_path / "a")
    with pytest.raises(DataCoverageError, match="rank 0/1 read 96 rows of split memory/train, but its shard holds 99"):
        train(config(), Claiming(image_source(), "train", 3, row_groups=True), tmp_path / "b")
    with pytest.raises(DataCoverageError, match="evaluation read 32 rows of memory/validation, the split holds 35"):
        train(config(), Claiming(image_source(), "validation", 3), tmp_path / "c")


class RepeatingTestIds(Wrapped):
    def evaluation_batches(self, split, plan, *, batch_size):
        for inputs, y, ids in self.inner.evaluation_batches(split, plan, batch_size=batch_size):
            yield inputs, y, ids if split != "test" else torch.zeros_like(ids)


def test_test_rows_read_twice_instead_of_once_are_a_coverage_error(tmp_path):
    with pytest.raises(DataCoverageError, match="evaluation of memory/test saw 1 distinct rows of 32"):
        train(config(), RepeatingTestIds(image_source()), tmp_path)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])  # 7 > 6 row groups: every rank keeps every 7th row
def test_in_memory_shards_are_disjoint_cover_the_split_and_run_equal_steps(world):
    source = image_source((90, 0, 0))  # row groups of 16: 5 x 16 + 10
    split = source.splits["train"]
    shards, steps = [], set()
    for rank in range(world):
        plan = plan_shard(split.row_group_sizes, rank, world)
        counter = EpochCounter(split, plan)
        batches = list(source.training_batches(plan, batch_size=8, epoch=0, counter=counter))
        steps.add(len(batches))
        assert all(len(y) == 8 for _, y, _ in batches)
        shard = [int(i) for _, _, ids in source.evaluation_batches("train", plan, batch_size=8) for i in ids]
        trained = collections.Counter(int(i) for _, _, ids in batches for i in ids)
        assert counter.first_pass_rows == plan.local_rows == len(shard)
        assert set(trained) == set(shard)  # the whole shard is trained on; padding only repeats its rows
        assert sum(trained.values()) - len(trained) == counter.padding_rows
        shards.extend(shard)
    assert len(steps) == 1
    assert sorted(shards) == list(range(90))


def test_a_rank_with_an_empty_shard_to_pad_is_a_coverage_error():
    source = image_source((2, 0, 0))
    plan = plan_shard(source.splits["train"].row_group_sizes, 2, 3)  # 2 rows over 3 ranks: rank 2 holds none
    with pytest.raises(DataCoverageError, match="rank 2: its shard of memory/train is empty"):
        next(source.training_batches(plan, batch_size=4, epoch=0, counter=EpochCounter(source.splits["train"], plan)))


def test_in_memory_shuffling_is_seeded_and_differs_by_epoch():
    def order(source, epoch):
        split = source.splits["train"]
        plan = plan_shard(split.row_group_sizes, 0, 1)
        batches = source.training_batches(plan, batch_size=16, epoch=epoch, counter=EpochCounter(split, plan))
        return [int(i) for _, _, ids in batches for i in ids]

    first = order(image_source(seed=1), 0)
    assert first == order(image_source(seed=1), 0) and sorted(first) == list(range(96))
    assert first != order(image_source(seed=1), 1) and first != order(image_source(seed=2), 0)
    assert first != sorted(first)


def test_the_in_memory_identity_follows_the_data_and_the_order():
    same = image_source().identity
    assert image_source().identity == same
    assert image_source(data_seed=1).identity != same  # other images
    assert image_source(seed=1).identity != same and image_source(row_group_rows=8).identity != same  # other order


def test_sequence_batches_are_longest_first_and_trimmed_to_the_longest():
    source = sequence_source()
    split = source.splits["test"]
    (tokens, lengths), _, _ = next(source.evaluation_batches("test", plan_shard(split.row_group_sizes, 0, 1),
                                                             batch_size=8))
    assert lengths.tolist() == sorted(lengths.tolist(), reverse=True)
    assert tokens.shape == (8, int(lengths[0])) and tokens.dtype == torch.int64
    assert all(int((row != 0).sum()) == n for row, n in zip(tokens, lengths))


def test_in_memory_data_that_does_not_fit_is_refused_naming_the_problem():
    images, labels = np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 1, 2, 1])
    with pytest.raises(DatasetError, match=r"memory/train: label 2 is not a class index of \['a', 'b'\]"):
        InMemorySource.images({"train": (images, labels)}, classes=["a", "b"])
    with pytest.raises(DatasetError, match="in-memory images are 8x6"):
        InMemorySource.images({"train": (images[..., :6], labels % 2)}, classes=["a", "b"])
    with pytest.raises(DatasetError, match=r"memory/test: images are \(1, 4, 4\), the dataset's are \(1, 8, 8\)"):
        InMemorySource.images({"train": (images, labels % 2), "test": (images[..., :4, :4], labels % 2)},
                              classes=["a", "b"])
    with pytest.raises(DatasetError, match="unknown split.*val"):
        InMemorySource.images({"train": (images, labels % 2), "val": (images, labels % 2)}, classes=["a", "b"])
    tokens = np.full((4, 5), 3)
    with pytest.raises(DatasetError, match=r"memory/train: token ids must be in \[0, 3\), got 3..3"):
        InMemorySource.sequences({"train": (tokens, np.full(4, 5), labels % 2)}, classes=["a", "b"], vocab_size=3)


def validation_loss(model, source) -> float:
    examples = source.examples["validation"]
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(*examples.inputs), examples.labels))


def test_the_run_ends_with_the_weights_of_its_best_validation_epoch(tmp_path):
    # SGD at a learning rate this high overshoots: validation loss falls, then climbs back
    cfg = config("train.epochs=6", "train.lr=2.0", "train.optimizer=sgd", "train.early_stopping_patience=0")
    source = image_source()
    metrics = train(cfg, source, tmp_path / "best").metrics
    losses = [h["val_loss"] for h in metrics["history"]]
    best = 1 + int(np.argmin(losses))
    assert best < 6, losses  # the case this test is about: the last epoch is not the best
    assert metrics["best_epoch"] == metrics["weights_epoch"] == metrics["lowest_val_loss_epoch"] == best
    assert metrics["kept_val_loss"] == metrics["lowest_val_loss"] == pytest.approx(losses[best - 1])
    assert "best_val_loss" not in metrics  # it named the kept loss, which need not be the lowest
    model, payload = checkpoint.load_model(tmp_path / "best" / "checkpoint.pt")
    assert payload["weights_epoch"] == best and payload["epoch"] == 6
    assert validation_loss(model, source) == pytest.approx(losses[best - 1], rel=1e-5)
    assert json.loads((tmp_path / "best" / "evaluation.json").read_text())["weights_epoch"] == best

    last = train(dataclasses.replace(cfg, keep_best=False), source, tmp_path / "last").metrics
    assert last["weights_epoch"] == 6 and last["best_epoch"] == last["lowest_val_loss_epoch"] == best
    assert last["kept_val_loss"] == pytest.approx(losses[-1]) and last["lowest_val_loss"] == pytest.approx(min(losses))
    model, _ = checkpoint.load_model(tmp_path / "last" / "checkpoint.pt")
    assert validation_loss(model, source) == pytest.approx(losses[-1], rel=1e-5)


def test_early_stopping_is_on_by_default_and_stops_after_three_epochs_without_improvement(tmp_path):
    cfg = config("train.epochs=40", "train.lr=2.0", "train.optimizer=sgd")
    assert (cfg.early_stopping_patience, cfg.keep_best) == (3, True)
    metrics = train(cfg, image_source(), tmp_path).metrics
    losses = [h["val_loss"] for h in metrics["history"]]
    assert metrics["stopped_early"] and len(losses) == metrics["best_epoch"] + 3 < 40
    kept = metrics["kept_val_loss"]
    assert kept == pytest.approx(losses[metrics["weights_epoch"] - 1])
    assert all(loss >= kept - cfg.early_stopping_margin(kept) for loss in losses[-3:])
