"""Training metrics count real rows only: the rows that pad a short shard (so that every rank takes the same
steps) are trained on but not counted."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.training.inmemory import Pixels, config, image_source
from training.distributed import SingleProcess
from training.trainer import Trainer


@pytest.mark.parametrize("batch_size, padding", [(8, 4), (16, 12), (32, 12)])
def test_train_loss_and_accuracy_are_over_the_split_rows_not_the_padding(tmp_path, batch_size, padding):
    torch.manual_seed(3)
    model = Pixels()
    source = image_source((20, 8, 8))  # 20 train rows: 3 batches of 8 (4 padding), 2 of 16 (12), 1 of 32 (12)
    with torch.no_grad():  # lr 0: the weights stay, so the epoch's metrics are those of this model on the split
        images, labels = source.examples["train"].inputs[0], source.examples["train"].labels
        logits = model(images.float() / 255)  # as the trainer gives them to a model of the user's
        loss, accuracy = float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())
    assert 0.05 < accuracy < 0.95  # the check below could not tell real rows from padding otherwise
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), source, SingleProcess(),
                      config("train.epochs=1", f"train.batch_size={batch_size}"), tmp_path, model_name="pixels")
    epoch = trainer.fit().metrics["history"][0]
    assert epoch["train_rows"] == 20 and epoch["padding_rows"] == padding
    assert epoch["train_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert epoch["train_loss"] == pytest.approx(loss, rel=1e-5)
