"""What a model receives: a user's model gets images as float32 in [0, 1], scaled on its device after a uint8 copy,
unless it asks for uint8 (``wants_uint8``); token ids stay int64. An exception of a user's model, loss or collate
function on the first batch ends the run in one line naming the function, its inputs and a hint, exit 2, with the
traceback in a file under the output folder."""
from __future__ import annotations

import pytest
import torch

from jobs.common import run_main
from tests.training.custom_model import Bytes, Fails
from tests.training.inmemory import config, image_source, sequence_source
from training import checkpoint
from training.device import to_device
from training.distributed import SingleProcess
from training.model_inputs import ScaledImages, scaled_inputs, wants_uint8
from training.models import CNN
from training.trainer import Trainer
from training.user_code import UserCodeError
from training.wiring import build_trainer


class Seen(torch.nn.Module):
    """Records the dtype and range of the inputs it is called with, in training and in evaluation."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.seen = inner, set()

    def forward(self, *inputs):
        self.seen.add((self.training, *(str(t.dtype) for t in inputs), float(inputs[0].max()) <= 1.0))
        return self.inner(*inputs)


def test_uint8_images_are_scaled_to_float_on_the_device_and_other_inputs_left_alone():
    images, tokens = torch.tensor([[0, 51, 255]], dtype=torch.uint8), torch.tensor([[3, 4]])
    (scaled,) = to_device((images,), torch.device("cpu"), scaled=(0,))
    assert scaled.dtype == torch.float32 and scaled[0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert to_device((tokens,), torch.device("cpu"), scaled=(0,))[0] is tokens  # only uint8 is scaled
    assert to_device((images,), torch.device("cpu"))[0] is images


def test_which_models_get_float_images():
    linear = torch.nn.Linear(2, 2)
    assert scaled_inputs("image", linear, None) == (0,) and not wants_uint8(linear)
    cnn = CNN(in_channels=1, image_size=8, num_classes=2)
    assert wants_uint8(cnn) and scaled_inputs("image", cnn, None) == ()
    assert scaled_inputs("sequence", linear, None) == ()
    assert scaled_inputs("image", linear, lambda inputs: inputs) == ()  # the collate function makes the inputs


def test_a_flatten_and_linear_model_trains_on_images_without_scaling_code(tmp_path):
    cfg = config("train.epochs=4", "train.model=tests.training.custom_model:linear", "train.lr=0.05",
                 "train.batch_size=8")
    source = image_source()
    metrics = build_trainer(cfg, source, tmp_path, SingleProcess()).fit().metrics
    assert metrics["test_accuracy"] >= 0.9 and metrics["history"][-1]["train_loss"] < 0.3
    model, _ = checkpoint.load_model(tmp_path / "checkpoint.pt")
    assert isinstance(model, ScaledImages)  # called with bigtrain's uint8 images, as predict calls it
    images, labels = source.examples["test"].inputs[0], source.examples["test"].labels
    with torch.no_grad():
        torch.testing.assert_close(model(images), model.model(images.float() / 255))
        assert model(images).argmax(1).eq(labels).float().mean() == pytest.approx(metrics["test_accuracy"])


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_training_and_evaluation_give_the_model_the_images_it_asks_for(tmp_path, kind):
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)) if kind == "float" else Bytes(64, 2)
    model = Seen(inner)
    model.wants_uint8 = kind == "uint8"
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), image_source(), SingleProcess(),
                      config(), tmp_path, model_name="seen")
    trainer.fit()
    expected = "torch.float32" if kind == "float" else "torch.uint8"
    assert model.seen == {(True, expected, kind == "float"), (False, expected, kind == "float")}


def test_a_model_that_asks_for_uint8_gets_them_and_loads_unwrapped(tmp_path):
    cfg = config("train.model=tests.training.custom_model:uint8_model", "train.epochs=2", "train.lr=0.05")
    metrics = build_trainer(cfg, image_source(), tmp_path, SingleProcess()).fit().metrics  # Bytes raises on floats
    assert metrics["test_accuracy"] >= 0.9
    assert isinstance(checkpoint.load_model(tmp_path / "checkpoint.pt")[0], Bytes)


def test_token_ids_reach_a_model_as_int64(tmp_path):
    model = Seen(build_trainer(config("train.model=tests.training.custom_model:build"), sequence_source(),
                               tmp_path / "built", SingleProcess()).model)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), sequence_source(), SingleProcess(), config(),
            tmp_path, model_name="seen").fit()
    assert {s[1:3] for s in model.seen} == {("torch.int64", "torch.int64")}


@pytest.mark.parametrize("settings, named, called_with, hint", [
    (["train.model=tests.training.custom_model:failing_model"],
     r"train\.model tests\.training\.custom_model:failing_model \(Fails\) raised RuntimeError on the first batch: "
     r"mat1 and mat2 must have the same dtype, but got Byte and Float",
     r"it was called with float32 \(16, 1, 8, 8\)",
     r"a model receives images float32 \(B, C, H, W\) in \[0, 1\] \(uint8 0\.\.255 where the model sets "
     r"wants_uint8 = True\) and returns logits \(B, classes\)"),
    (["train.loss=tests.training.custom_model:failing_loss"],
     r"train\.loss tests\.training\.custom_model:failing_loss raised ValueError on the first batch: labels must be "
     r"float", r"it was called with float32 \(16, 2\), int64 \(16,\)",
     r"train\.loss receives \(logits float \(B, classes\), labels int64 \(B,\)\) and returns one loss per row"),
    (["train.collate=tests.training.custom_model:failing_collate"],
     r"train\.collate tests\.training\.custom_model:failing_collate raised IndexError on the first batch: tuple index "
     r"out of range", r"it was called with \(uint8 \(16, 1, 8, 8\)\)",
     r"train\.collate receives the batch's inputs as a tuple of host tensors \(images uint8 \(B, C, H, W\)\)"),
])
def test_the_users_code_failing_on_the_first_batch_ends_the_run_in_one_line(tmp_path, capsys, settings, named,
                                                                           called_with, hint):
    cfg = config("train.model=tests.training.custom_model:linear", *settings)
    with pytest.raises(UserCodeError, match=f"{named}; {called_with}; {hint}.*; traceback in ") as raised:
        build_trainer(cfg, image_source(), tmp_path, SingleProcess()).fit()
    assert raised.value.exit_code == 2
    traceback = (tmp_path / "first-batch-error" / "rank0.txt").read_text()
    assert traceback.startswith("Traceback (most recent call last)") and "custom_model.py" in traceback
    assert str(tmp_path / "first-batch-error" / "rank0.txt") in str(raised.value)
    capsys.readouterr()
    assert run_main(lambda: build_trainer(cfg, image_source(), tmp_path / "again", SingleProcess()).fit()) == 2
    err = capsys.readouterr().err  # bigtrain's own INFO lines too, where an earlier test set logging up
    errors = [line for line in err.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith("error: train.") and "Traceback" not in err


def test_after_the_first_batch_the_users_exceptions_pass_as_they_are(tmp_path):
    cfg = config("train.model=tests.training.custom_model:failing_model", "train.model_config.at=3")
    with pytest.raises(RuntimeError, match="mat1 and mat2") as raised:
        build_trainer(cfg, image_source(), tmp_path, SingleProcess()).fit()
    assert not isinstance(raised.value, UserCodeError) and not (tmp_path / "first-batch-error").exists()


def test_bigtrains_own_models_keep_their_tracebacks(tmp_path):
    trainer = build_trainer(config(), image_source(), tmp_path, SingleProcess())
    assert trainer.step.guard.users == {} and not trainer.step.guard.armed
    fails = Fails(1)
    guarded = Trainer(fails, torch.optim.SGD(fails.parameters(), lr=0.1), image_source(), SingleProcess(), config(),
                      tmp_path / "user", model_name="fails").step.guard
    assert guarded.users == {"train.model": "tests.training.custom_model:Fails"}
