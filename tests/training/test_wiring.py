"""Training from a dataset URL in one process (``training.wiring.fit``, a world of one): it learns, evaluates
every test row, and saves safely."""
from __future__ import annotations

import json

import pytest
import torch

from core.config import load_section
from training.config import TrainConfig
from training.distributed import SingleProcess
from training.wiring import fit

pytestmark = pytest.mark.spark


def test_training_learns_and_writes_metrics_and_a_safe_checkpoint(image_dataset, tmp_path):
    config = load_section("train", TrainConfig, overrides=["train.epochs=6", "train.batch_size=16", "train.lr=0.05",
                                                          "train.progress_bar=never"])
    metrics = fit(config, data_url=str(image_dataset), output_dir=tmp_path, dist=SingleProcess()).metrics
    meta = json.loads((image_dataset / "metadata.json").read_text())
    history = metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["train_rows"] == meta["splits"]["train"]["rows"] for h in history)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test_rows"] == meta["splits"]["test"]["rows"]
    assert set(written["per_class_accuracy"]) == set(meta["classes"])
    assert 0.0 <= written["test_accuracy"] <= 1.0 and written["test_loss"] > 0
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["classes"] == meta["classes"] and checkpoint["config"]["epochs"] == 6
    assert checkpoint["model_state"]["classifier.4.weight"].shape[0] == len(meta["classes"])


def without_split(dataset, tmp_path, split: str):
    """A copy of ``dataset`` whose ``split`` is empty (no files, 0 rows in metadata.json)."""
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["splits"][split]["rows"] = 0
    (copy / "metadata.json").write_text(json.dumps(meta))
    shutil.rmtree(copy / split)
    return copy


def test_an_empty_train_split_is_refused(image_dataset, tmp_path):
    from core.errors import DatasetError

    copy = without_split(image_dataset, tmp_path, "train")
    config = load_section("train", TrainConfig, overrides=["train.epochs=1"])
    with pytest.raises(DatasetError, match="train is empty"):
        fit(config, data_url=str(copy), output_dir=tmp_path / "out", dist=SingleProcess())


def test_an_empty_test_split_gives_null_test_metrics_not_zero(image_dataset, tmp_path):
    copy = without_split(image_dataset, tmp_path, "test")
    config = load_section("train", TrainConfig, overrides=["train.epochs=1", "train.progress_bar=never"])
    metrics = fit(config, data_url=str(copy), output_dir=tmp_path / "out", dist=SingleProcess()).metrics
    assert metrics["test_rows"] == 0 and metrics["test_accuracy"] is None and metrics["test_loss"] is None


def test_sequence_training_learns_with_the_default_fasttext(text_dataset, tmp_path):
    config = load_section("train", TrainConfig, overrides=["train.epochs=4", "train.batch_size=16",
                                                          "train.progress_bar=never"])
    metrics = fit(config, data_url=str(text_dataset), output_dir=tmp_path, dist=SingleProcess()).metrics
    assert metrics["model"] == "fasttext" and metrics["optimizer"] == "adam"
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    meta = json.loads((text_dataset / "metadata.json").read_text())
    assert metrics["test_rows"] == meta["splits"]["test"]["rows"]
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"] == "fasttext" and checkpoint["dataset"]["sequence"]["vocab_size"] == meta["sequence"]["vocab_size"]
