"""A user's own model, named by an import path: it trains in memory, through ``training.api.fit``, under
horovodrun and under torchrun; it resumes; its checkpoint records the path, and ``load_model`` and predict rebuild
it, or refuse in one line when its code cannot be imported. The two new built-in text models run on every backend."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from core.errors import CheckpointError, ConfigError, UsageError
from tests.conftest import REPO, subprocess_env, tool
from tests.training.custom_model import MeanOfTokens, build
from tests.training.inmemory import config, sequence_source
from training import checkpoint
from training.api import fit, model_path
from training.distributed import SingleProcess
from training.wiring import build_trainer

MODEL = "tests.training.custom_model:build"
TRAIN = str(REPO / "jobs" / "train.py")


def test_a_model_from_an_import_path_trains_and_its_checkpoint_rebuilds_it(tmp_path):
    source = sequence_source()
    cfg = config("train.epochs=4", f"train.model={MODEL}", "train.model_config.width=12", "train.lr=0.02",
                 "train.loss=tests.training.custom_model:smoothed")
    metrics = build_trainer(cfg, source, tmp_path, SingleProcess()).fit().metrics
    assert metrics["model"] == MODEL and metrics["optimizer"] == "adam"
    assert metrics["test_accuracy"] >= 0.9  # two token ranges: easy
    model, payload = checkpoint.load_model(tmp_path / "checkpoint.pt")
    assert isinstance(model, MeanOfTokens) and model.embedding.weight.shape[1] == 12
    assert payload["model"] == MODEL and payload["config"]["model_config"] == {"width": 12}
    tokens, lengths = source.examples["test"].inputs
    fresh = build_trainer(cfg, source, tmp_path / "again", SingleProcess()).model  # untrained: differs
    assert not torch.allclose(fresh(tokens, lengths), model(tokens, lengths))
    assert model(tokens, lengths).argmax(1).eq(source.examples["test"].labels).float().mean() == pytest.approx(
        metrics["test_accuracy"])


def test_a_checkpoint_whose_model_cannot_be_imported_is_refused_in_one_line(tmp_path):
    metrics = build_trainer(config(f"train.model={MODEL}"), sequence_source(), tmp_path, SingleProcess()).fit().metrics
    assert (metrics["optimizer"], metrics["lr"]) == ("adam", pytest.approx(0.001))  # a user's model: Adam's default
    payload = checkpoint.load(tmp_path / "checkpoint.pt")
    moved = checkpoint.save(tmp_path / "moved" / "checkpoint.pt", {**payload, "model": "tests.training.gone:build"})
    with pytest.raises(CheckpointError, match=rf"checkpoint {moved} holds a tests\.training\.gone:build model that "
                                              r"cannot be rebuilt here: config key train\.model \(--model\): cannot "
                                              r"import tests\.training\.gone"):
        checkpoint.load_model(moved)
    from inference import batch as predict

    with pytest.raises(UsageError, match=r"--checkpoint: checkpoint .* cannot be rebuilt here"):
        predict.load_checkpoint(str(moved), trusted=["tests.training.gone:build"])
    reshaped = checkpoint.save(tmp_path / "reshaped" / "checkpoint.pt",
                               {**payload, "config": {**payload["config"], "model_config": {"width": 5}}})
    with pytest.raises(CheckpointError, match=r"the tests\.training\.custom_model:build model built here does not "
                                              r"take the saved weights .*was its code or train\.model_config changed"):
        checkpoint.load_model(reshaped)


def test_a_collate_function_shapes_the_inputs_in_training_and_after_loading(tmp_path):
    from training.models import Collated

    source = sequence_source()
    cfg = config("train.epochs=3", "train.lr=0.05", "train.model=tests.training.custom_model:bag_model",
                 "train.collate=tests.training.custom_model:counts")
    metrics = build_trainer(cfg, source, tmp_path, SingleProcess()).fit().metrics
    assert metrics["test_accuracy"] >= 0.9 and metrics["parameters"] == 4096 * 2 + 2  # the linear model over counts
    model, payload = checkpoint.load_model(tmp_path / "checkpoint.pt")
    assert isinstance(model, Collated) and isinstance(model.model, torch.nn.Linear)
    tokens, lengths = source.examples["test"].inputs  # bigtrain's inputs in, the collate applied inside
    assert model(tokens, lengths).argmax(1).eq(source.examples["test"].labels).float().mean() == pytest.approx(
        metrics["test_accuracy"])
    with pytest.raises(ConfigError, match=r"config key train\.collate: 'counts' is not an import path"):
        config("train.collate=counts")


def test_a_model_class_given_where_a_factory_goes_is_one_line_naming_the_contract():
    from training.models import build_model

    cfg = config("train.model=tests.training.custom_model:TinyImages")
    with pytest.raises(ConfigError, match=r"train\.model \(--model\): tests\.training\.custom_model:TinyImages\(dataset, "
                                          r"model_config\) raised TypeError: .*; a model factory is called with the "
                                          r"dataset's description \(a DatasetSpec: kind 'sequence'"):
        build_model(cfg.model, dataset=sequence_source().spec, config=cfg)


def test_resuming_with_another_model_config_is_refused(tmp_path):
    build_trainer(config(f"train.model={MODEL}"), sequence_source(), tmp_path, SingleProcess()).fit()
    with pytest.raises(CheckpointError, match=r"was trained with train\.model_config=\{\}, this run has "
                                              r"\{'width': 8\}"):
        build_trainer(config(f"train.model={MODEL}", "train.model_config.width=8", "train.epochs=2"),
                      sequence_source(), tmp_path, SingleProcess()).fit()


def test_model_path_of_a_factory_and_of_what_has_none():
    assert model_path(build) == MODEL and model_path("lstm") == "lstm"

    def local(dataset, config):
        return build(dataset, config)

    for unnamed in (local, lambda dataset, config: None):
        with pytest.raises(ConfigError, match="has no import path .*define the factory at the top level of a module"):
            model_path(unnamed)


@pytest.mark.spark
def test_fit_trains_from_python_with_a_factory_and_settings(text_dataset, tmp_path):
    result = fit(str(text_dataset), tmp_path, model=build, epochs=2, batch_size=16, loader_workers=0,
                 progress_bar="never", model_config={"width": 8}, backend="single")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["model"] == MODEL == result.metrics["model"] and written["config"]["model_config"] == {"width": 8}
    assert written["epochs_completed"] == 2 and isinstance(result.model, MeanOfTokens)
    assert written["baselines"]["bag_of_words"]["accuracy"] > written["baselines"]["majority_class"]["accuracy"]
    with pytest.raises(ConfigError, match=r"unknown config key train\.epoch \(did you mean train\.epochs\? known keys of train: "):
        fit(str(text_dataset), tmp_path / "typo", epoch=2)


@pytest.mark.spark
def test_predict_scores_as_the_trainer_did_with_a_collate_function(spark, text_dataset, tmp_path):
    from core.config import load_section
    from core.paths import to_url
    from dataset.info import load_dataset_info
    from inference import batch

    metrics = fit(str(text_dataset), tmp_path / "model", model="tests.training.custom_model:bag_model",
                  collate="tests.training.custom_model:counts", epochs=2, lr=0.05, batch_size=16,
                  loader_workers=0, progress_bar="never", backend="single").metrics
    info = load_dataset_info(str(text_dataset))
    batch.predict(spark, model=batch.load_checkpoint(str(tmp_path / "model"), trusted=[
                    "tests.training.custom_model:bag_model", "tests.training.custom_model:counts"]), data=info,
                output_url=to_url(str(tmp_path / "scored")), config=load_section("predict", batch.PredictConfig))
    import pandas as pd

    scored = pd.read_parquet(tmp_path / "scored")
    assert len(scored) == info.splits["test"].rows == metrics["test_rows"]
    assert (scored["predicted_class"] == scored["label"]).mean() == pytest.approx(metrics["test_accuracy"])


def launch(cmd: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}  # the user's module, importable on every rank
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd[:3]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def horovodrun(*args: str) -> list[str]:
    return [tool("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, TRAIN, *args]


def torchrun(*args: str) -> list[str]:
    return [tool("torchrun"), "--nproc_per_node", "2", TRAIN, "--backend", "torch", *args]


@pytest.mark.horovod
@pytest.mark.spark
def test_your_model_under_horovodrun_and_torchrun_resumes_and_predicts(spark, text_dataset, tmp_path):
    common = ["--data", str(text_dataset), "--model", MODEL, "--set", "train.model_config.width=8", "--batch-size",
              "16", "--no-progress", "--loader-workers", "1", "--early-stopping-patience", "0"]
    launch(horovodrun("--output", str(tmp_path / "hvd"), "--epochs", "1", *common), tmp_path)
    resumed = launch(horovodrun("--output", str(tmp_path / "hvd"), "--epochs", "2", *common), tmp_path)
    assert "resuming from" in resumed.stderr and resumed.stdout.count("train: test accuracy") == 1
    launch(torchrun("--output", str(tmp_path / "ddp"), "--epochs", "2", *common), tmp_path)
    hvd, ddp = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("hvd", "ddp"))
    assert (hvd["backend"], hvd["world_size"], hvd["epochs_completed"], hvd["model"]) == ("horovod", 2, 2, MODEL)
    assert hvd["resumed_from"] and len(hvd["history"]) == 2
    assert (ddp["backend"], ddp["world_size"], ddp["model"]) == ("torch", 2, MODEL)
    assert hvd["baselines"] == ddp["baselines"]  # summed over the ranks: the same counts, whatever the engine
    for a, b in zip(hvd["history"], ddp["history"]):  # as in test_backends: the same run up to rounding
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3)

    from core.paths import to_url
    from dataset.info import load_dataset_info
    from inference import batch
    from core.config import load_section

    config = load_section("predict", batch.PredictConfig, flags={"batch_size": 16})
    info = load_dataset_info(str(text_dataset))
    summary = batch.predict(spark, model=batch.load_checkpoint(str(tmp_path / "hvd"), trusted=[MODEL]), data=info,
                          output_url=to_url(str(tmp_path / "scored")), config=config)
    assert summary["scored"] == info.splits["test"].rows and summary["unusable"] == 0
    model, _ = checkpoint.load_model(tmp_path / "hvd" / "checkpoint.pt")
    assert isinstance(model, MeanOfTokens)


@pytest.mark.horovod
@pytest.mark.spark
@pytest.mark.slow  # four launcher runs (40 s): make test-slow
@pytest.mark.parametrize("launcher", [horovodrun, torchrun], ids=["horovodrun", "torchrun"])
def test_the_fasttext_and_transformer_models_train_under_both_launchers(text_dataset, tmp_path, launcher):
    for name in ("fasttext", "transformer"):
        out = tmp_path / name
        launch(launcher("--data", str(text_dataset), "--output", str(out), "--model", name, "--epochs", "1",
                        "--batch-size", "16", "--no-progress", "--loader-workers", "1"), tmp_path)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["model"] == name and metrics["world_size"] == 2 and metrics["test_rows"] > 0
        model, _ = checkpoint.load_model(out / "checkpoint.pt")
        assert type(model).__name__ == {"fasttext": "BagOfEmbeddings", "transformer": "TransformerClassifier"}[name]
