"""The typed checkpoint: ``training.checkpoint.Checkpoint`` is what every checkpoint holds, written as the plain dict
of the same keys as before it existed (so files written before it load), each kind with its own keys; and every
file a run leaves is named in ``training.outputs``."""
from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch

from core.errors import CheckpointError
from tests.training.inmemory import config, image_source
from training import checkpoint, outputs
from training.checkpoint import Checkpoint
from training.distributed import SingleProcess
from training.wiring import build_trainer

BASE = {"model_state", "model", "config", "classes", "class_to_index", "dataset"}
MARKER = {"format", "version"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-epoch run that keeps its best epoch's weights."""
    out = tmp_path_factory.mktemp("run")
    metrics = build_trainer(config("train.epochs=2", "train.keep_checkpoints=5"), image_source(), out,
                            SingleProcess()).fit().metrics
    return out, metrics


def stored_keys(path) -> set[str]:
    """The keys of the dict in the file, read as torch reads it."""
    return set(torch.load(path, map_location="cpu", weights_only=True))


def test_each_kind_of_checkpoint_holds_the_keys_it_always_held(run):
    out, metrics = run
    final = out / outputs.CHECKPOINT_FILE
    assert stored_keys(final) == BASE | MARKER | {"epoch", "global_step", "weights_epoch"}
    assert stored_keys(out / outputs.RESUME_DIR / outputs.BEST_FILE) == BASE | MARKER | {"epoch", "global_step"}
    point = checkpoint.latest_resume_point(out)
    assert stored_keys(point) == BASE | MARKER | {"optimizer_state", "progress", "schedule", "random", "epoch",
                                                  "step", "global_step"}
    loaded = Checkpoint.load(final)
    assert (loaded.epoch, loaded.weights_epoch, loaded.step, loaded.progress) == (2, metrics["weights_epoch"], None,
                                                                                 None)
    assert (loaded.kind, loaded.snapshot_id, loaded.model) == ("image", metrics["snapshot_id"], "cnn")
    assert loaded.dataset_spec().classes == ["dark", "bright"] and loaded.train_config().epochs == 2
    assert json.loads(checkpoint.sidecar_of(point).read_text())["global_step"] == Checkpoint.load(point).global_step


def test_a_file_written_before_the_dataclass_loads(tmp_path, run):
    """A checkpoint as the dict-writing code saved it: torch.save of the keys, the sidecar beside it."""
    out, _ = run
    old = torch.load(out / outputs.CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    legacy = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model_state": old["model_state"],
              "model": "cnn", "config": old["config"], "classes": ["dark", "bright"],
              "class_to_index": {"dark": 0, "bright": 1}, "dataset": old["dataset"], "epoch": 2, "global_step": 12,
              "weights_epoch": 2}
    buffer = io.BytesIO()
    torch.save(legacy, buffer)
    path = tmp_path / outputs.CHECKPOINT_FILE
    path.write_bytes(buffer.getvalue())
    checkpoint.sidecar_of(path).write_text(json.dumps({"sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}))
    loaded = Checkpoint.load(path)
    assert (loaded.model, loaded.global_step, loaded.class_to_index) == ("cnn", 12, {"dark": 0, "bright": 1})
    assert set(loaded.to_payload()) == set(legacy) - MARKER  # written back with the keys it was read with
    model, payload = checkpoint.load_model(path)
    assert payload["weights_epoch"] == 2 and not model.training


def test_a_checkpoint_missing_a_key_is_refused_naming_it(tmp_path, run):
    out, _ = run
    payload = checkpoint.load(out / outputs.CHECKPOINT_FILE)
    del payload["classes"], payload["dataset"]
    path = checkpoint.save(tmp_path / outputs.CHECKPOINT_FILE, payload)
    with pytest.raises(CheckpointError, match=rf"{path} lacks classes, dataset: it is not a complete bigtrain "
                                              "checkpoint"):
        Checkpoint.load(path)
    with pytest.raises(CheckpointError, match="lacks classes, dataset"):
        checkpoint.read(path).checkpoint


def test_a_run_names_its_outputs_from_one_module(run):
    out, _ = run
    for name in (outputs.CHECKPOINT_FILE, outputs.METRICS_FILE, outputs.METRICS_LOG_FILE, outputs.RESUME_DIR,
                 outputs.TENSORBOARD_DIR, outputs.EVALUATION_FILE, outputs.CONFUSION_PNG, outputs.CURVES_PNG):
        assert (out / name).exists(), name
    assert not (out / outputs.LOCK_FILE).exists()  # held for the run, removed at its end
    assert checkpoint.FINAL_FILE == outputs.CHECKPOINT_FILE and checkpoint.RESUME_DIR == outputs.RESUME_DIR
